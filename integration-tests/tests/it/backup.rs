//! `certfleet backup` / `certfleet restore` end to end: a running fleet is backed up while its
//! agents report, its controller dies, and the backup brings the same fleet back in another
//! directory on another address, with every agent reconnecting under its existing identity.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use crate::rotation::{self, wait_plan};
use crate::support::{Controller, bin, free_port};

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `certfleet restore` with `extra` arguments and environment.
fn restore(input: &Path, data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(bin("certfleet"))
        .args(["restore", "--in"])
        .arg(input)
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        .env_remove("CERTFLEET_BACKUP_PASSPHRASE")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// Certificates of the inventory as (fingerprint, agents that report it), sorted.
fn inventory(c: &Controller) -> Vec<(String, Vec<String>)> {
    let mut v: Vec<(String, Vec<String>)> = c
        .json(&["inventory"])
        .as_array()
        .unwrap()
        .iter()
        .map(|cert| {
            let mut agents: Vec<String> = cert["locations"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["agent_id"].as_str().unwrap().to_owned())
                .collect();
            agents.sort();
            (
                cert["fingerprint_sha256"].as_str().unwrap().to_owned(),
                agents,
            )
        })
        .collect();
    v.sort();
    v
}

/// Agents as (id, name, certificate fingerprint, enrolled at), sorted.
fn identities(c: &Controller) -> Vec<(String, String, String, i64)> {
    let mut v: Vec<_> = c
        .agents()
        .iter()
        .map(|a| {
            (
                a["id"].as_str().unwrap().to_owned(),
                a["name"].as_str().unwrap().to_owned(),
                a["cert_fingerprint"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                a["enrolled_at"].as_i64().unwrap_or_default(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_backup_restored_on_a_new_machine_serves_the_same_fleet_without_re_enrollment() {
    let tmp = tempfile::tempdir().unwrap();
    let mut f = rotation::fleet(tmp.path(), 1, &[]);
    // History to bring back: a plan that renewed the application host, and a viewer.
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
    // The renewed certificate reported before the snapshot is compared.
    crate::support::wait_for(
        "the renewed certificate in the inventory",
        std::time::Duration::from_secs(30),
        || {
            let inv = f.c.json(&["inventory", "--role", "file.renewable"]);
            let days = inv.as_array()?.first()?["days_left"].as_i64()?;
            (days > 30).then_some(())
        },
    );
    let agents_before = identities(&f.c);
    assert_eq!(agents_before.len(), 2);
    let inventory_before = inventory(&f.c);

    let pass = tmp.path().join("pass");
    std::fs::write(&pass, "a long test passphrase\n").unwrap();
    let file = tmp.path().join("fleet.cfbak");
    let pass_arg = ["--passphrase-file", pass.to_str().unwrap()];
    // Backed up while agents report (a rescan asked for just before).
    f.c.cli(&["inventory", "rescan"]);
    let mut args = vec!["backup", "--out", file.to_str().unwrap(), "-o", "json"];
    args.extend(pass_arg);
    let written: serde_json::Value = serde_json::from_str(&f.c.cli(&args)).unwrap();
    let files = written["files"].as_array().unwrap();
    for want in ["ca/ca.key", "ca/ca.pem", "server/key.pem", "admin/key.pem"] {
        assert!(files.iter().any(|f| f == want), "{want} missing: {written}");
    }
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let bytes = std::fs::read(&file).unwrap();
    assert!(
        !bytes.windows(11).any(|w| w == b"PRIVATE KEY"),
        "keys in the clear"
    );
    // Never over an existing file (usage, 2); a viewer may not back up (refused, 3); a short
    // passphrase is refused (2). No passphrase on the command line at all (clap refuses it).
    let o = f.c.cli_as(&f.c.admin(), &args);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(err(&o).contains("already exists"), "{}", err(&o));
    assert_eq!(std::fs::read(&file).unwrap(), bytes);
    let other = tmp.path().join("other.cfbak");
    let mut vargs = vec!["backup", "--out", other.to_str().unwrap()];
    vargs.extend(pass_arg);
    let o = f.c.cli_as(&viewer, &vargs);
    assert_eq!(o.status.code(), Some(3), "{}", err(&o));
    let o = Command::new(bin("certfleet"))
        .args(["--controller", &f.c.addr, "--identity"])
        .arg(f.c.admin())
        .args(["backup", "--out", other.to_str().unwrap()])
        .env("CERTFLEET_BACKUP_PASSPHRASE", "short")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(err(&o).contains("at least 12"), "{}", err(&o));
    assert!(!other.exists());
    let audit = f.c.json(&["audit"]);
    let mut audit_at_backup: Vec<String> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        audit_at_backup.pop().as_deref(),
        Some("store.backup"),
        "{audit:#}"
    );

    // The controller's machine is lost.
    f.c.proc.as_mut().unwrap().kill9();
    for p in &mut f.procs {
        p.term();
    }

    // Refusals write nothing: wrong passphrase, a truncated copy, a non-empty destination.
    let newhost = tmp.path().join("newhost");
    let data = newhost.join("data");
    let o = restore(
        &file,
        &data,
        &[],
        &[("CERTFLEET_BACKUP_PASSPHRASE", "not the passphrase")],
    );
    assert_eq!(o.status.code(), Some(1), "{}", err(&o));
    assert!(err(&o).contains("wrong passphrase"), "{}", err(&o));
    let cut = tmp.path().join("cut.cfbak");
    std::fs::write(&cut, &bytes[..bytes.len() - 7]).unwrap();
    let o = restore(&cut, &data, &pass_arg, &[]);
    assert!(
        err(&o).contains("damaged") && err(&o).contains(cut.to_str().unwrap()),
        "{}",
        err(&o)
    );
    assert!(!newhost.exists() || std::fs::read_dir(&newhost).unwrap().count() == 0);
    let o = restore(&file, &f.c.dir.join("data"), &pass_arg, &[]);
    assert!(err(&o).contains("not empty"), "{}", err(&o));

    let mut json_args = pass_arg.to_vec();
    // The new machine is also reached by a new name: the controller certificate is re-issued
    // (same fleet CA) with it added.
    json_args.extend(["-o", "json", "--san", "newhost.example"]);
    let o = restore(&file, &data, &json_args, &[]);
    assert!(o.status.success(), "{}", err(&o));
    let restored: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        restored["fleet_ca_fingerprint"],
        written["fleet_ca_fingerprint"]
    );
    let key_mode = std::fs::metadata(data.join("ca/ca.key")).unwrap();
    assert_eq!(key_mode.permissions().mode() & 0o777, 0o600);
    let old_cert = std::fs::read(f.c.dir.join("data/server/cert.pem")).unwrap();
    assert_ne!(
        std::fs::read(data.join("server/cert.pem")).unwrap(),
        old_cert
    );
    let text = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(data.join("server/cert.pem"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("DNS:newhost.example") && text.contains("IP Address:127.0.0.1"),
        "{text}"
    );
    assert_eq!(
        std::fs::metadata(data.join("server/key.pem"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );

    // The new controller, on another address.
    let mut c2 = Controller {
        dir: newhost.clone(),
        addr: format!("127.0.0.1:{}", free_port()),
        http: format!("127.0.0.1:{}", free_port()),
        proc: None,
        extra: Vec::new(),
    };
    c2.serve();
    // Agents are told the new address (as DNS would) and restarted: no enrollment.
    let configs: Vec<_> = std::iter::once(f.ca_root.join("agent.toml"))
        .chain(f.apps.iter().map(|(_, _, cfg)| cfg.clone()))
        .collect();
    let mut procs = Vec::new();
    for (state, cfg) in f.states.iter().zip(&configs) {
        let meta_path = state.join("agent.json");
        let mut meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&meta_path).unwrap()).unwrap();
        meta["controller"] = serde_json::Value::String(c2.addr.clone());
        std::fs::write(&meta_path, serde_json::to_vec(&meta).unwrap()).unwrap();
        procs.push(c2.run_agent(state, Some(cfg), &[]));
    }
    c2.wait_connected(2);
    assert_eq!(identities(&c2), agents_before, "agents enrolled again");
    assert_eq!(inventory(&c2), inventory_before);
    assert_eq!(rotation::plan_json(&c2, &id)["state"], "succeeded");
    // Operators keep working: the viewer's certificate is still known.
    let o = c2.cli_as(&viewer, &["agents", "list"]);
    assert!(o.status.success(), "{}", err(&o));
    let audit = c2.json(&["audit"]);
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    // The audit as it was at the snapshot (the backup's own entry comes after it), then the
    // restore.
    assert_eq!(actions.last(), Some(&"store.restore"), "{actions:?}");
    assert_eq!(
        &actions[..actions.len() - 1],
        &audit_at_backup[..],
        "{actions:?}"
    );
    let status = c2.json(&["status"]);
    assert_eq!(status["store_healthy"], true, "{status}");
    assert_eq!(status["agents_connected"], 2, "{status}");
    assert_eq!(status["healthy"], true, "{status}");
    drop(procs);
}

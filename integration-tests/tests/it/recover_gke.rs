//! `certfleet recover gke-kubeconfig` end to end, one fleet: a controller and two simulated
//! GKE on VMware admin workstations. On `ws` the kubeconfig of user cluster `user-cluster-1`
//! holds an expired client certificate (the simulated kubectl gets `Unauthorized` with it)
//! while the admin cluster's `admin` secret holds a current one (re-issued on the last
//! upgrade, reference B1); `user-cluster-2`'s copy is fine. On `ws2` the admin kubeconfig
//! expired too, so nothing can be fetched there. Checked: the dry run prints the plan and
//! changes nothing; a recovery over both workstations is refused naming ws2's admin
//! kubeconfig; the recovery of `ws` fetches and installs the new kubeconfig (backup taken,
//! owner and mode kept, kubectl works with it again, the healthy copy untouched) and prints its
//! wall time; a second run has nothing to do.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use certfleet_integration_tests::sim::gke::{self, GkeSpec, GkeState, UserClusterSpec};
use certfleet_integration_tests::sim::{self, Lifetime, SimHost};

use crate::support::{self, Controller};

/// An admin workstation built with expired kubeconfigs, ready for an agent.
pub(crate) struct ExpiredWorkstation {
    /// The simulated host.
    pub host: SimHost,
    /// Its agent config.
    pub config: PathBuf,
    /// The built workstation (real paths).
    pub ws: gke::Workstation,
}

/// Builds admin workstation `name` under `dir`: user cluster `user-cluster-1` with an expired
/// client certificate in its kubeconfig (owner 1000:1000, mode 0600) while the admin cluster's
/// `admin` secret holds a current one, `user-cluster-2` healthy; with `admin_expired` the admin
/// kubeconfig's client certificate expired as well.
pub(crate) fn expired_workstation(
    dir: &Path,
    name: &str,
    admin_expired: bool,
) -> ExpiredWorkstation {
    let host = SimHost::new(dir.join(name), sim::default_sim_bin()).unwrap();
    host.link_real_tool("/usr/bin/openssl").unwrap();
    let mut expired = UserClusterSpec::new("user-cluster-1", "user-cluster.yaml");
    expired.client = Lifetime::days(370, -5);
    let healthy = UserClusterSpec::new("user-cluster-2", "user-cluster-2.yaml");
    let mut spec = GkeSpec {
        users: vec![expired, healthy],
        ..GkeSpec::default()
    };
    if admin_expired {
        spec.admin_client = Lifetime::days(370, -5);
    }
    let ws = gke::build_admin_workstation(&host, &spec).unwrap();
    // The admin cluster re-issued the user cluster's admin kubeconfig (an upgrade rotates the
    // control-plane certificates): the workstation's copy is stale.
    let mut state = GkeState::load(&host).unwrap();
    state
        .users
        .get_mut("user-cluster-1")
        .unwrap()
        .refresh_admin_secret()
        .unwrap();
    state.save(&host).unwrap();
    std::os::unix::fs::chown(&ws.users[0].kubeconfig, Some(1000), Some(1000)).unwrap();
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "root = \"{}\"\ntool_timeout = \"20s\"\nscan_interval = \"1h\"\n",
            host.root.display()
        ),
    )
    .unwrap();
    ExpiredWorkstation { host, config, ws }
}

/// `kubectl --kubeconfig KC version` with the simulated kubectl of `host`.
pub(crate) fn kubectl_version(host: &SimHost, kc: &Path) -> Output {
    Command::new(host.path("/usr/bin/kubectl"))
        .args(["--kubeconfig", kc.to_str().unwrap(), "version"])
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Every file under `dir` whose bytes are `bytes`.
fn files_with(dir: &Path, bytes: &[u8]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_with(&p, bytes));
        } else if std::fs::read(&p).is_ok_and(|b| b == bytes) {
            out.push(p);
        }
    }
    out
}

/// Waits until `agent` reported a certificate with `role`.
pub(crate) fn wait_role(c: &Controller, agent: &str, role: &str) {
    support::wait_for(
        &format!("{agent} to report {role}"),
        Duration::from_secs(60),
        || {
            c.json(&["inventory", "--agent", agent])
                .as_array()
                .is_some_and(|a| a.iter().any(|r| r["role"] == role))
                .then_some(())
        },
    );
}

#[test]
fn recover_gke_kubeconfig_fetches_expired_kubeconfigs_anew() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let w = expired_workstation(d, "ws", false);
    let w2 = expired_workstation(d, "ws2", true);
    let kc1 = w.ws.users[0].kubeconfig.clone();
    let kc2 = w.ws.users[1].kubeconfig.clone();
    let old1 = std::fs::read(&kc1).unwrap();
    let old2 = std::fs::read(&kc2).unwrap();

    // Before: the simulated kubectl refuses the expired client certificate.
    let o = kubectl_version(&w.host, &kc1);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("You must be logged in to the server (Unauthorized)"),
        "{}",
        text(&o)
    );
    assert!(kubectl_version(&w.host, &kc2).status.success());

    let c = Controller::start(&d.join("ctl"), &[]);
    let state = c.enroll("ws");
    let state2 = c.enroll("ws2");
    let _a = c.run_agent(&state, Some(&w.config), &[]);
    let _a2 = c.run_agent(&state2, Some(&w2.config), &[]);
    c.wait_connected(2);
    wait_role(&c, "ws", "gke.user_cluster.client");
    wait_role(&c, "ws2", "gke.admin_cluster.client");
    let recover = |args: &[&str]| {
        let mut a = vec!["recover", "gke-kubeconfig"];
        a.extend(args);
        c.cli_as(&c.admin(), &a)
    };

    // 1. Dry run over ws: the plan (fetch + install of user-cluster-1 only), nothing changed.
    let o = recover(&["--agent", "ws", "--dry-run", "-o", "json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(plan["state"], "dry_run", "{plan:#}");
    let steps: Vec<(String, String)> = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["action"].as_str().unwrap().to_owned(),
                s["target"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let target = "ws:/home/ubuntu/user-cluster-1-kubeconfig".to_owned();
    assert_eq!(
        steps,
        [
            ("gke.fetch_kubeconfig".to_owned(), target.clone()),
            ("kubeconfig.install".to_owned(), target)
        ],
        "{plan:#}"
    );
    assert!(
        plan.to_string()
            .contains("get secret admin -n user-cluster-1"),
        "{plan:#}"
    );
    assert!(text(&o).contains("planned in"), "{}", text(&o));
    assert_eq!(
        std::fs::read(&kc1).unwrap(),
        old1,
        "a dry run changed the file"
    );

    // 2. Over both workstations: refused, naming ws2's expired admin kubeconfig.
    let o = recover(&[]);
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("ws2:/home/ubuntu/user-cluster-1-kubeconfig (cluster user-cluster-1) cannot be fetched: the admin kubeconfig /home/ubuntu/kubeconfig of that workstation has a client certificate expiring at"),
        "{}",
        text(&o)
    );
    assert_eq!(std::fs::read(&kc1).unwrap(), old1);

    // 3. The recovery of ws.
    let o = recover(&["--agent", "ws"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("succeeded"), "{}", text(&o));
    assert!(text(&o).contains("done in"), "{}", text(&o));
    assert!(text(&o).contains("s wall time"), "{}", text(&o));
    let new1 = std::fs::read(&kc1).unwrap();
    assert_ne!(new1, old1);
    let secret = GkeState::load(&w.host).unwrap().users["user-cluster-1"]
        .admin_conf
        .clone();
    assert_eq!(
        new1,
        secret.as_bytes(),
        "the admin cluster's copy is installed"
    );
    let o = kubectl_version(&w.host, &kc1);
    assert!(
        o.status.success(),
        "kubectl after the recovery: {}",
        text(&o)
    );
    let m = std::fs::metadata(&kc1).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1000, 1000, 0o600));
    assert!(
        !files_with(&state.join("backups"), &old1).is_empty(),
        "no backup of the old kubeconfig under {}",
        state.join("backups").display()
    );
    assert_eq!(
        std::fs::read(&kc2).unwrap(),
        old2,
        "the healthy copy was touched"
    );
    // ws2 untouched.
    let ws2_kc1 = std::fs::read(&w2.ws.users[0].kubeconfig).unwrap();
    assert!(
        !kubectl_version(&w2.host, &w2.ws.users[0].kubeconfig)
            .status
            .success()
    );
    assert!(!ws2_kc1.is_empty());

    // 4. Again once the agent rescanned: nothing to do.
    c.cli(&["inventory", "rescan", "ws"]);
    let now = certfleet_common::model::now();
    support::wait_for(
        "the new kubeconfig in the inventory",
        Duration::from_secs(60),
        || {
            let inv = c.json(&["inventory", "--agent", "ws"]);
            let clients: Vec<i64> = inv
                .as_array()?
                .iter()
                .filter(|r| r["role"] == "gke.user_cluster.client")
                .filter(|r| {
                    r["locations"].as_array().is_some_and(|l| {
                        l.iter()
                            .any(|l| l["path"] == "/home/ubuntu/user-cluster-1-kubeconfig")
                    })
                })
                .filter_map(|r| certfleet_common::model::parse_time(r["not_after"].as_str()?))
                .collect();
            (!clients.is_empty() && clients.iter().all(|na| *na > now)).then_some(())
        },
    );
    let o = recover(&["--agent", "ws"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("nothing to fetch"), "{}", text(&o));
}

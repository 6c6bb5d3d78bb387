//! The whole fleet expired at once (issue 11), on one controller: a VCSA 7.0 whose STS signing,
//! Machine SSL and every solution-user certificate expired (logins refused, TLS refused), an
//! oVirt 4.5 cluster of two hosts whose VDSM certificates expired (libvirtd refuses to start,
//! the engine sees them NonResponsive) and a GKE on VMware admin workstation whose user-cluster
//! kubeconfig holds an expired client certificate (kubectl refused). Each outage is brought
//! back with its one command, one after the other as an operator would; the simulated services
//! work again afterwards. The test prints each command's wall time and the total (the README
//! quotes a run). Needs `cargo build --workspace --bins`, `openssl`.

use std::process::Output;
use std::time::{Duration, Instant};

use crate::ovirt_api::{api_fleet, make_non_responsive};
use crate::ovirt_rotation::{VDSM_CERT, check_renewed, not_after, roots_hash};
use crate::recover_gke::{expired_workstation, kubectl_version, wait_role};
use crate::recover_ovirt::state;
use crate::recover_vsphere::{expired_vcsa, tls_verifies};
use crate::vsphere_rotation::login;

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn the_whole_expired_fleet_comes_back_with_one_command_per_outage() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hosts = ["kvm01", "kvm02"];
    let (f, _api, _port) = api_fleet(d, &[("kvm01", -2), ("kvm02", -2)]);
    let c = &f.c;
    let before: Vec<i64> = hosts
        .iter()
        .map(|n| not_after(&f.hosts[*n].path(VDSM_CERT)))
        .collect();
    for n in hosts {
        make_non_responsive(&f, n, 0);
    }
    let (v, _services, _vc_agent) = expired_vcsa(c, d, "vc1");
    let w = expired_workstation(d, "ws", false);
    let ws_state = c.enroll("ws");
    let _ws_agent = c.run_agent(&ws_state, Some(&w.config), &[]);
    wait_role(c, "ws", "gke.user_cluster.client");
    let kc = w.ws.users[0].kubeconfig.clone();
    let admin = c.admin();

    // Before: every simulated service refuses.
    assert!(!login(&v).0, "vCenter login works before the recovery");
    assert!(
        !tls_verifies(&v).0,
        "Machine SSL verifies before the recovery"
    );
    for n in hosts {
        assert_eq!(state(&f.hosts[n], "libvirtd"), "failed", "{n}");
    }
    assert!(!kubectl_version(&w.host, &kc).status.success());

    // The oVirt command's usage error and dry run change nothing.
    let roots = roots_hash(&f);
    let unknown = c.cli_as(&admin, &["recover", "ovirt-hosts", "--cluster", "nope"]);
    assert_eq!(unknown.status.code(), Some(2), "{}", text(&unknown));
    assert!(text(&unknown).contains("Default (2)"), "{}", text(&unknown));
    let dry = c.cli_as(
        &admin,
        &[
            "recover",
            "ovirt-hosts",
            "--cluster",
            "Default",
            "--dry-run",
        ],
    );
    assert!(dry.status.success(), "{}", text(&dry));
    assert!(
        text(&dry).contains("ovirt-hosts-offline") && text(&dry).contains("dry run"),
        "{}",
        text(&dry)
    );
    assert_eq!(roots_hash(&f), roots, "a dry run changed a host");

    // One command per outage.
    let commands: [&[&str]; 3] = [
        &["recover", "vsphere", "--agent", "vc1"],
        &[
            "recover",
            "ovirt-hosts",
            "--cluster",
            "Default",
            "--max-parallel",
            "2",
        ],
        &["recover", "gke-kubeconfig", "--agent", "ws"],
    ];
    let t0 = Instant::now();
    let mut times: Vec<(String, Duration)> = Vec::new();
    let mut outputs = Vec::new();
    for args in commands {
        let t = Instant::now();
        let o = c.cli_as(&admin, args);
        let shown = format!("certfleet {}", args.join(" "));
        assert_eq!(o.status.code(), Some(0), "{shown}: {}", text(&o));
        assert!(text(&o).contains("wall time"), "{shown}: {}", text(&o));
        times.push((shown, t.elapsed()));
        outputs.push(text(&o));
    }
    let total = t0.elapsed();
    eprintln!("whole-fleet recovery (1 VCSA, 2 oVirt hosts, 1 GKE workstation):");
    for (cmd, t) in &times {
        eprintln!("  {:>6.1}s  {cmd}", t.as_secs_f64());
    }
    eprintln!("  {:>6.1}s  total wall time", total.as_secs_f64());

    // After: the simulated services work again.
    let (ok, out) = login(&v);
    assert!(ok, "vCenter login after the recovery: {out}");
    let (ok, out) = tls_verifies(&v);
    assert!(ok, "Machine SSL after the recovery: {out}");
    let ovirt = &outputs[1];
    for step in [
        "step 1: ovirt-engine: nothing to",
        "step 2: ovirt-hosts-offline: plan",
        "step 3: ovirt-hosts: plan",
    ] {
        assert!(ovirt.contains(step), "{ovirt}");
    }
    for (i, n) in hosts.iter().enumerate() {
        check_renewed(&f, n, before[i]);
        assert_eq!(state(&f.hosts[*n], "libvirtd"), "active", "{n}");
        assert_eq!(state(&f.hosts[*n], "vdsmd"), "active", "{n}");
    }
    let o = kubectl_version(&w.host, &kc);
    assert!(
        o.status.success(),
        "kubectl after the recovery: {}",
        text(&o)
    );
}

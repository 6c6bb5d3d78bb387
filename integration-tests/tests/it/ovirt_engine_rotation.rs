//! `ovirt-engine` end to end: a self-hosted 4.5 engine whose `apache` (short life) and
//! `engine` certificates are inside engine-setup's windows and whose OVN certificates
//! (which engine-setup skips) expire soon; two hosts, one of them the hosted-engine host.
//! `certfleet plan create ovirt-engine … --run` with and without `--param he_host=…`, then
//! the engine PKI checked with the real `openssl`, and the simulated hosted-engine and
//! systemd state.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;

use certfleet_integration_tests::sim::ovirt::engine::{OVN_DB_KEYS, ovn_account};
use certfleet_integration_tests::sim::ovirt::setup::OVN_RESTARTS;
use certfleet_integration_tests::sim::ovirt::{Engine, EngineSpec, OvirtVersion, setup};
use certfleet_integration_tests::sim::{Lifetime, systemd};
use serde_json::Value;

use crate::ovirt_rotation::{
    Fleet, PKI, fleet_spec, fqdn, hash_tree, not_after, now, openssl, roots_hash, s, serial, step,
    wait_plan,
};
use crate::support;

const OVN: &[&str] = &["ovirt-provider-ovn", "ovn-ndb", "ovn-sdb"];
const VDSM: &str = "/etc/pki/vdsm/certs/vdsmcert.pem";
const VMCONSOLE: &[&str] = &[
    "vmconsole-proxy-helper",
    "vmconsole-proxy-host",
    "vmconsole-proxy-user",
];

fn engine_fleet(dir: &Path) -> Fleet {
    let mut spec = EngineSpec::new(OvirtVersion::V4_5, &fqdn("engine"));
    spec.lifetimes
        .insert("apache".into(), Lifetime::days(380, 20));
    spec.lifetimes
        .insert("engine".into(), Lifetime::days(1700, 100));
    for n in OVN {
        spec.lifetimes
            .insert(n.to_string(), Lifetime::days(1800, 25));
    }
    let f = fleet_spec(dir, spec, &[("kvm01", 1500), ("kvm02", 1500)], "");
    let e = Engine::load(&f.engine).unwrap();
    setup::engine_services(&e).unwrap();
    setup::make_he_host(&f.hosts["kvm01"], &e).unwrap();
    for h in f.hosts.values() {
        systemd::define_unit(h, "ovirt-imageio", &["/etc/pki/vdsm/certs/vdsmcert.pem"]).unwrap();
    }
    support::wait_for(
        "engine certificates in the inventory",
        Duration::from_secs(60),
        || {
            let inv = f.c.json(&["inventory"]).to_string();
            OVN.iter()
                .chain(["apache", "engine"].iter())
                .all(|n| inv.contains(&format!("/etc/pki/ovirt-engine/certs/{n}.cer")))
                .then_some(())
        },
    );
    f
}

fn pki(f: &Fleet, rel: &str) -> std::path::PathBuf {
    f.engine.path(&format!("{PKI}/{rel}"))
}

/// `(mode, uid, gid)` of a file.
fn mode_owner(p: &Path) -> (u32, u32, u32) {
    let m = std::fs::metadata(p).unwrap();
    (m.mode() & 0o7777, m.uid(), m.gid())
}

fn pubkey_of_cert(p: &Path) -> String {
    openssl(&["x509", "-in", &s(p), "-noout", "-pubkey"])
}

fn global_maintenance(f: &Fleet) -> Option<bool> {
    let st: Value =
        serde_json::from_slice(&std::fs::read(f.engine.state("ovirt-engine.json")).unwrap())
            .unwrap();
    st["ha_global_maintenance"].as_bool()
}

#[test]
fn engine_setup_refuses_without_global_maintenance_and_the_plan_halts_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let f = engine_fleet(dir.path());
    // The simulated tool itself, as an operator would hit it.
    let out = Command::new(f.engine.path("/usr/bin/engine-setup"))
        .args(["--offline", "--accept-defaults"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("Hosted Engine setup detected, but Global Maintenance is not set."),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let roots_before = roots_hash(&f);
    let dry = f.c.json(&[
        "plan",
        "create",
        "ovirt-engine",
        "--expiring-within",
        "120d",
        "--param",
        "he_host=kvm01",
        "--dry-run",
    ]);
    assert_eq!(dry["state"], "dry_run");
    let actions: Vec<&str> = dry["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions
            .iter()
            .filter(|a| **a == "ovirt.engine_reissue")
            .count(),
        3,
        "{actions:?}"
    );
    assert_eq!(
        step(&dry, "engine", "ovirt.global_maintenance")["agent"],
        "kvm01"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(roots_hash(&f), roots_before, "dry run changed something");

    // Without he_host the plan does not set global maintenance: engine-setup refuses.
    let pki_before = hash_tree(&f.engine.path(PKI));
    let plan = f.c.json(&[
        "plan",
        "create",
        "ovirt-engine",
        "--expiring-within",
        "120d",
        "--failure-budget",
        "0",
        "--run",
    ]);
    let id = plan["id"].as_str().unwrap().to_owned();
    let done = wait_plan(&f.c, &id, &["succeeded", "failed"]);
    assert_eq!(done["state"], "failed", "{done:#}");
    let setup_step = step(&done, "engine", "ovirt.engine_setup");
    let msg = setup_step["message"].as_str().unwrap();
    assert!(
        msg.contains("Global Maintenance is not set") && msg.contains("restored"),
        "{msg}"
    );
    for st in done["steps"].as_array().unwrap() {
        if st["action"] != "ovirt.engine_setup" {
            assert_eq!(st["state"], "skipped", "{st:#}");
        }
    }
    assert_eq!(
        hash_tree(&f.engine.path(PKI)),
        pki_before,
        "engine PKI changed"
    );
}

#[test]
fn engine_recipe_renews_engine_and_ovn_certificates_under_global_maintenance() {
    let dir = tempfile::tempdir().unwrap();
    let f = engine_fleet(dir.path());
    let engine_key = pubkey_of_cert(&pki(&f, "certs/engine.cer"));
    let apache_key = pubkey_of_cert(&pki(&f, "certs/apache.cer"));
    let jboss = std::fs::read(pki(&f, "certs/jboss.cer")).unwrap();
    let ovn_keys: Vec<String> = OVN
        .iter()
        .map(|n| pubkey_of_cert(&pki(&f, &format!("certs/{n}.cer"))))
        .collect();
    let before_apache = not_after(&pki(&f, "certs/apache.cer"));
    let ovn_keys_before: BTreeMap<String, (u32, u32, u32)> = OVN
        .iter()
        .map(|n| {
            let k = format!("keys/{n}.key.nopass");
            let v = mode_owner(&pki(&f, &k));
            (k, v)
        })
        .collect();
    let ovn_starts: Vec<u32> = OVN_RESTARTS
        .iter()
        .map(|u| systemd::unit(&f.engine, u).unwrap().starts)
        .collect();
    let imageio_starts: Vec<u32> = ["kvm01", "kvm02"]
        .iter()
        .map(|h| systemd::unit(&f.hosts[*h], "ovirt-imageio").unwrap().starts)
        .collect();

    let plan = f.c.json(&[
        "plan",
        "create",
        "ovirt-engine",
        "--expiring-within",
        "120d",
        "--param",
        "he_host=kvm01",
        "--failure-budget",
        "0",
        "--run",
    ]);
    let id = plan["id"].as_str().unwrap().to_owned();
    let done = wait_plan(&f.c, &id, &["succeeded", "failed"]);
    assert_eq!(done["state"], "succeeded", "{done:#}");

    let out = step(&done, "engine", "ovirt.engine_setup")["output"].to_string();
    assert!(out.contains("Renewing apache certificate"), "{out}");
    assert!(out.contains("Renewing engine certificate"), "{out}");
    assert!(!out.contains("Renewing jboss"), "{out}");
    assert!(
        out.contains("Execution of setup completed successfully"),
        "{out}"
    );
    // apache: new key, 398 days; engine: same key (keepKey), 1827 days; jboss untouched.
    let ca = s(&pki(&f, "ca.pem"));
    for (n, days) in [("apache", 398), ("engine", 1827)] {
        let p = pki(&f, &format!("certs/{n}.cer"));
        assert!(openssl(&["verify", "-CAfile", &ca, &s(&p)]).contains(": OK"));
        let na = not_after(&p);
        assert!(
            (na - (now() + days * 86_400)).abs() < 3600,
            "{n}: notAfter {na}"
        );
    }
    assert!(not_after(&pki(&f, "certs/apache.cer")) > before_apache);
    assert_ne!(pubkey_of_cert(&pki(&f, "certs/apache.cer")), apache_key);
    assert_eq!(pubkey_of_cert(&pki(&f, "certs/engine.cer")), engine_key);
    assert_eq!(std::fs::read(pki(&f, "certs/jboss.cer")).unwrap(), jboss);
    // common_backup left the old apache certificate next to the new one.
    let backups: Vec<String> = std::fs::read_dir(pki(&f, "certs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("apache.cer."))
        .collect();
    assert_eq!(backups.len(), 1, "{backups:?}");

    // OVN: re-issued with their own keys, SAN, 1827 days, p12 and key.nopass consistent.
    for (n, old_key) in OVN.iter().zip(&ovn_keys) {
        let p = pki(&f, &format!("certs/{n}.cer"));
        assert!(openssl(&["verify", "-CAfile", &ca, &s(&p)]).contains(": OK"));
        assert_eq!(&pubkey_of_cert(&p), old_key, "{n}: key changed");
        let ext = openssl(&["x509", "-in", &s(&p), "-noout", "-ext", "subjectAltName"]);
        assert!(
            ext.contains(&format!("DNS:{}", fqdn("engine"))),
            "{n}: {ext}"
        );
        assert!(
            (not_after(&p) - (now() + 1827 * 86_400)).abs() < 3600,
            "{n}"
        );
        let nopass = openssl(&[
            "pkey",
            "-in",
            &s(&pki(&f, &format!("keys/{n}.key.nopass"))),
            "-pubout",
        ]);
        assert_eq!(&nopass, old_key, "{n}: key.nopass");
        let p12 = openssl(&[
            "pkcs12",
            "-in",
            &s(&pki(&f, &format!("keys/{n}.p12"))),
            "-passin",
            "pass:mypass",
            "-nokeys",
            "-clcerts",
        ]);
        let p12_cert = dir.path().join(format!("{n}.p12.pem"));
        std::fs::write(&p12_cert, p12).unwrap();
        assert_eq!(
            serial(&p12_cert),
            serial(&p),
            "{n}: p12 holds another certificate"
        );
        let mode = std::fs::metadata(pki(&f, &format!("keys/{n}.p12")))
            .unwrap()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "keys/{n}.p12");
        // The key keeps what engine-setup gave it: OVN's database keys 0640 group
        // openvswitch (ovirtproviderovn.py), the provider's 0600 root.
        let k = format!("keys/{n}.key.nopass");
        assert_eq!(
            mode_owner(&pki(&f, &k)),
            ovn_keys_before[&k],
            "{k}: owner/group/mode changed"
        );
    }
    let ovs_gid = ovn_account().gids[1];
    for k in OVN_DB_KEYS {
        let m = std::fs::metadata(pki(&f, k)).unwrap();
        assert_eq!((m.mode() & 0o777, m.gid()), (0o640, ovs_gid), "{k}");
    }
    // Global maintenance was on during engine-setup and is off again.
    assert_eq!(global_maintenance(&f), Some(false));
    let gm_on = step(&done, "engine", "ovirt.global_maintenance");
    assert!(
        gm_on["output"].to_string().contains("--mode=global"),
        "{gm_on:#}"
    );
    // Services restarted with the new certificates: the engine's by engine-setup, OVN's by
    // the plan after the re-issue (what engine-setup restarts for OVN), and OVN could read its
    // keys (ovn-northd runs as the OVN account).
    for u in ["ovirt-engine", "httpd"] {
        let unit = systemd::unit(&f.engine, u).unwrap();
        assert_eq!(unit.state, "active", "{u}");
        assert!(unit.starts >= 1, "{u} not restarted");
    }
    for (u, before) in OVN_RESTARTS.iter().zip(&ovn_starts) {
        let unit = systemd::unit(&f.engine, u).unwrap();
        assert_eq!(unit.state, "active", "{u}: {}", unit.last_error);
        assert!(
            unit.starts >= before + 2,
            "{u}: engine-setup and the plan restart it"
        );
    }
    let restart = done["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["action"] == "service.restart" && s["agent"] == "engine")
        .unwrap();
    assert_eq!(
        restart["name"],
        "restart openvswitch, ovn-northd, ovirt-provider-ovn"
    );
    for (i, h) in ["kvm01", "kvm02"].iter().enumerate() {
        let unit = systemd::unit(&f.hosts[*h], "ovirt-imageio").unwrap();
        assert_eq!(unit.state, "active");
        assert!(
            unit.starts > imageio_starts[i],
            "{h}: ovirt-imageio not restarted"
        );
    }
    let verify = step(&done, "engine", "ovirt.engine_verify");
    assert_eq!(verify["state"], "succeeded");
}

#[test]
fn ovn_cannot_read_a_key_without_the_group_engine_setup_gave_it() {
    let dir = tempfile::tempdir().unwrap();
    let spec = EngineSpec::new(OvirtVersion::V4_5, &fqdn("engine"));
    let host = certfleet_integration_tests::sim::SimHost::new(
        dir.path().join("root-engine"),
        crate::support::bin("certfleet-sim"),
    )
    .unwrap();
    let e = certfleet_integration_tests::sim::ovirt::build_engine(&host, &spec).unwrap();
    setup::engine_services(&e).unwrap();
    let key = e.path("keys/ovn-ndb.key.nopass");
    // As engine-setup leaves it: OVN restarts fine.
    assert_eq!(mode_owner(&key).0, 0o640);
    assert_eq!(mode_owner(&key).2, ovn_account().gids[1]);
    let restart = || systemd::run(&host, &["restart".to_owned(), "ovn-northd".to_owned()]).unwrap();
    assert_eq!(
        restart(),
        0,
        "{}",
        systemd::unit(&host, "ovn-northd").unwrap().last_error
    );
    if !nix::unistd::geteuid().is_root() {
        // Without root the simulator cannot give the key to another account, so OVN runs as
        // the caller, who owns the key either way.
        eprintln!("not root: cannot simulate the OVN account; skipping the denial check");
        return;
    }
    // A replacement written the old way (root:root 0600): OVN is locked out at its restart.
    std::os::unix::fs::chown(&key, Some(0), Some(0)).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(restart(), 1);
    let u = systemd::unit(&host, "ovn-northd").unwrap();
    assert_eq!(u.state, "failed");
    assert!(
        u.last_error.contains("ovn-ndb.key.nopass") && u.last_error.contains("Permission denied"),
        "{}",
        u.last_error
    );
    // Group openvswitch but mode 0600 is not enough either.
    std::os::unix::fs::chown(&key, None, Some(ovn_account().gids[1])).unwrap();
    assert_eq!(restart(), 1);
    // engine-setup's own fix (it runs on every upgrade) makes it readable again.
    let out = Command::new(host.path("/usr/bin/engine-setup"))
        .args(["--offline", "--accept-defaults"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(mode_owner(&key).0, 0o640);
    assert_eq!(systemd::unit(&host, "ovn-northd").unwrap().state, "active");
}

#[test]
fn engine_setup_renews_the_cas_in_their_window_and_the_plan_refreshes_every_host_copy() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = EngineSpec::new(OvirtVersion::V4_5, &fqdn("engine"));
    // Both CAs have 200 days left: inside engine-setup's 365-day window, outside the plan's
    // --expiring-within; no engine service certificate is due.
    for ca in ["ca", "qemu-ca"] {
        spec.lifetimes.insert(ca.into(), Lifetime::days(3450, 200));
    }
    let mut f = fleet_spec(dir.path(), spec, &[("kvm01", 1500), ("kvm02", 1500)], "");
    let e = Engine::load(&f.engine).unwrap();
    setup::engine_services(&e).unwrap();
    for h in f.hosts.values() {
        systemd::define_unit(h, "ovirt-imageio", &["/etc/pki/vdsm/certs/vdsmcert.pem"]).unwrap();
    }
    support::wait_for(
        "the engine CA in the inventory",
        Duration::from_secs(60),
        || {
            f.c.json(&["inventory"])
                .to_string()
                .contains("/etc/pki/ovirt-engine/qemu-ca.pem")
                .then_some(())
        },
    );
    const ENGINE_CA_COPIES: &[&str] = &[
        "/etc/pki/vdsm/certs/cacert.pem",
        "/etc/pki/vdsm/libvirt-spice/ca-cert.pem",
        "/etc/pki/vdsm/libvirt-vnc/ca-cert.pem",
        "/etc/pki/CA/cacert.pem",
        "/etc/pki/vdsm/ovn/ca-cert.pem",
    ];
    const QEMU_CA_COPY: &str = "/etc/pki/vdsm/libvirt-migrate/ca-cert.pem";
    let old_ca = std::fs::read(pki(&f, "ca.pem")).unwrap();
    let perms_before: BTreeMap<String, (u32, u32, u32)> = f
        .hosts
        .iter()
        .flat_map(|(n, h)| {
            ENGINE_CA_COPIES
                .iter()
                .chain([QEMU_CA_COPY].iter())
                .map(move |c| (format!("{n}{c}"), mode_owner(&h.path(c))))
        })
        .collect();
    let libvirtd_starts: Vec<u32> = f
        .hosts
        .values()
        .map(|h| systemd::unit(h, "libvirtd").unwrap().starts)
        .collect();

    setup::set_engine_setup_delay(&f.engine, 3000).unwrap();
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
    // The engine's agent dies while engine-setup runs (it runs for minutes on a real engine;
    // 3 s here), as a crash of the agent's unit leaves it running (KillMode=process). The
    // agent started again must wait for that run and take what it did, not start another.
    support::wait_for("engine-setup started", Duration::from_secs(60), || {
        (setup::engine_setup_runs(&f.engine) == 1).then_some(())
    });
    f._agents[0].kill9();
    let cfg = dir.path().join("agent.toml");
    let root = f.engine.root.display().to_string();
    f._agents[0] = f.c.run_agent(
        &f.c.dir.join("agent-engine"),
        Some(&cfg),
        &["--root", &root],
    );
    let done = wait_plan(&f.c, &id, &["succeeded", "failed"]);
    assert_eq!(done["state"], "succeeded", "{done:#}");
    assert_eq!(
        setup::engine_setup_runs(&f.engine),
        1,
        "engine-setup ran a second time after the agent died"
    );
    let out = step(&done, "engine", "ovirt.engine_setup")["output"].to_string();
    assert!(
        out.contains("engine-setup is still running")
            && out.contains("instead of running it again"),
        "the resumed step did not wait for the running engine-setup: {out}"
    );
    for ca in ["ca.pem", "qemu-ca.pem"] {
        assert!(
            out.contains(&format!("Renewing CA: /etc/pki/ovirt-engine/{ca}")),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "[WARNING] CA /etc/pki/ovirt-engine/{ca} was renewed, please refresh manually distributed copies"
            )),
            "{out}"
        );
    }
    assert!(!out.contains("Renewing apache"), "{out}");
    // The CAs: same key and subject, CA_DAYS (7300) from now, the old file kept.
    let ca = pki(&f, "ca.pem");
    let qemu = pki(&f, "qemu-ca.pem");
    for p in [&ca, &qemu] {
        assert!(
            (not_after(p) - (now() + 7300 * 86_400)).abs() < 3600,
            "{}",
            p.display()
        );
    }
    assert_ne!(std::fs::read(&ca).unwrap(), old_ca);
    let backups: Vec<String> = std::fs::read_dir(f.engine.path(PKI))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("ca.pem."))
        .collect();
    assert_eq!(backups.len(), 1, "{backups:?}");
    assert_eq!(
        std::fs::read(f.engine.path(&format!("{PKI}/{}", backups[0]))).unwrap(),
        old_ca
    );
    // Engine certificates issued before still verify against the renewed CA.
    let v = openssl(&[
        "verify",
        "-CAfile",
        &s(&ca),
        &s(&pki(&f, "certs/apache.cer")),
    ]);
    assert!(v.contains(": OK"), "{v}");
    // Every host copy is the new CA, owner/group/mode kept, every leaf verifies.
    let new_ca = std::fs::read(&ca).unwrap();
    let new_qemu = std::fs::read(&qemu).unwrap();
    for (i, (n, h)) in f.hosts.iter().enumerate() {
        for c in ENGINE_CA_COPIES {
            assert_eq!(std::fs::read(h.path(c)).unwrap(), new_ca, "{n}: {c}");
        }
        assert_eq!(
            std::fs::read(h.path(QEMU_CA_COPY)).unwrap(),
            new_qemu,
            "{n}"
        );
        for c in ENGINE_CA_COPIES.iter().chain([QEMU_CA_COPY].iter()) {
            assert_eq!(
                mode_owner(&h.path(c)),
                perms_before[&format!("{n}{c}")],
                "{n}: {c}"
            );
        }
        for (cafile, leaf) in [
            ("/etc/pki/vdsm/certs/cacert.pem", VDSM),
            (
                QEMU_CA_COPY,
                "/etc/pki/vdsm/libvirt-migrate/server-cert.pem",
            ),
        ] {
            let v = openssl(&["verify", "-CAfile", &s(&h.path(cafile)), &s(&h.path(leaf))]);
            assert!(v.contains(": OK"), "{n}: {v}");
        }
        let u = systemd::unit(h, "libvirtd").unwrap();
        assert_eq!(u.state, "active");
        assert!(u.starts > libvirtd_starts[i], "{n}: libvirtd not restarted");
        // One target for the engine renewal: find the host's step by its agent.
        let r = done["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["action"] == "ovirt.refresh_host_ca" && s["agent"] == n.as_str())
            .unwrap_or_else(|| panic!("no refresh step for {n}: {done:#}"));
        assert!(
            r["message"]
                .as_str()
                .unwrap()
                .contains("refreshed 6 CA copies"),
            "{r:#}"
        );
    }
}

#[test]
fn vmconsole_proxy_certificates_are_collected_and_renewed_by_engine_setup() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = EngineSpec::new(OvirtVersion::V4_5, &fqdn("engine"));
    for n in VMCONSOLE {
        spec.lifetimes
            .insert(n.to_string(), Lifetime::days(1800, 20));
    }
    let f = fleet_spec(dir.path(), spec, &[("kvm01", 1500)], "");
    let e = Engine::load(&f.engine).unwrap();
    setup::engine_services(&e).unwrap();
    systemd::define_unit(
        &f.hosts["kvm01"],
        "ovirt-imageio",
        &["/etc/pki/vdsm/certs/vdsmcert.pem"],
    )
    .unwrap();
    // Collected with their roles: X.509 and OpenSSH, and the proxy's copies.
    let want = [
        "/etc/pki/ovirt-engine/certs/vmconsole-proxy-helper.cer",
        "/etc/pki/ovirt-engine/certs/vmconsole-proxy-host.cer",
        "/etc/pki/ovirt-engine/certs/vmconsole-proxy-host-cert.pub",
        "/etc/pki/ovirt-engine/certs/vmconsole-proxy-user-cert.pub",
        "/etc/pki/ovirt-vmconsole/proxy-ssh_user_rsa-cert.pub",
    ];
    let inv = support::wait_for("vmconsole certificates", Duration::from_secs(60), || {
        let inv = f.c.json(&["inventory"]);
        let s = inv.to_string();
        want.iter().all(|w| s.contains(w)).then_some(inv)
    });
    for r in inv.as_array().unwrap() {
        let s = r.to_string();
        if s.contains("vmconsole-proxy-host-cert.pub") {
            assert_eq!(r["role"], "ovirt.engine.vmconsole-proxy-host", "{r:#}");
            assert!(
                r["subject"].as_str().unwrap().contains("host certificate"),
                "{r:#}"
            );
        }
    }
    let old_ssh = std::fs::read(pki(&f, "certs/vmconsole-proxy-user-cert.pub")).unwrap();
    let plan = f.c.json(&[
        "plan",
        "create",
        "ovirt-engine",
        "--expiring-within",
        "60d",
        "--failure-budget",
        "0",
        "--run",
    ]);
    let id = plan["id"].as_str().unwrap().to_owned();
    let done = wait_plan(&f.c, &id, &["succeeded", "failed"]);
    assert_eq!(done["state"], "succeeded", "{done:#}");
    let out = step(&done, "engine", "ovirt.engine_setup")["output"].to_string();
    assert!(
        out.contains("Setting up ovirt-vmconsole proxy helper PKI artifacts")
            && out.contains("Setting up ovirt-vmconsole SSH PKI artifacts"),
        "{out}"
    );
    let ca = s(&pki(&f, "ca.pem"));
    for n in VMCONSOLE {
        let p = pki(&f, &format!("certs/{n}.cer"));
        assert!(openssl(&["verify", "-CAfile", &ca, &s(&p)]).contains(": OK"));
        assert!(
            (not_after(&p) - (now() + 1827 * 86_400)).abs() < 3600,
            "{n}"
        );
    }
    let new_ssh = std::fs::read(pki(&f, "certs/vmconsole-proxy-user-cert.pub")).unwrap();
    assert_ne!(new_ssh, old_ssh);
    assert_eq!(
        std::fs::read(
            f.engine
                .path("/etc/pki/ovirt-vmconsole/proxy-ssh_user_rsa-cert.pub")
        )
        .unwrap(),
        new_ssh
    );
    let verify = step(&done, "engine", "ovirt.engine_verify");
    let msg = verify["message"].as_str().unwrap();
    assert!(
        msg.contains("vmconsole-proxy-user-cert.pub: until"),
        "{msg}"
    );
}

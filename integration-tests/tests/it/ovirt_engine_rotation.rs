//! `ovirt-engine` end to end: a self-hosted 4.5 engine whose `apache` (short life) and
//! `engine` certificates are inside engine-setup's windows and whose OVN certificates
//! (which engine-setup skips) expire soon; two hosts, one of them the hosted-engine host.
//! `certfleet plan create ovirt-engine … --run` with and without `--param he_host=…`, then
//! the engine PKI checked with the real `openssl`, and the simulated hosted-engine and
//! systemd state.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use certfleet_integration_tests::sim::ovirt::{Engine, EngineSpec, OvirtVersion, setup};
use certfleet_integration_tests::sim::{Lifetime, systemd};
use serde_json::Value;

use crate::ovirt_rotation::{
    Fleet, PKI, fleet_spec, fqdn, hash_tree, not_after, now, openssl, roots_hash, s, serial, step,
    wait_plan,
};
use crate::support;

const OVN: &[&str] = &["ovirt-provider-ovn", "ovn-ndb", "ovn-sdb"];

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
        use std::os::unix::fs::PermissionsExt;
        for k in [format!("keys/{n}.p12"), format!("keys/{n}.key.nopass")] {
            let mode = std::fs::metadata(pki(&f, &k)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{k}");
        }
    }
    // Global maintenance was on during engine-setup and is off again.
    assert_eq!(global_maintenance(&f), Some(false));
    let gm_on = step(&done, "engine", "ovirt.global_maintenance");
    assert!(
        gm_on["output"].to_string().contains("--mode=global"),
        "{gm_on:#}"
    );
    // Services restarted with the new certificates.
    for u in [
        "ovirt-engine",
        "httpd",
        "ovirt-provider-ovn",
        "ovsdb-server",
    ] {
        let unit = systemd::unit(&f.engine, u).unwrap();
        assert_eq!(unit.state, "active", "{u}");
        assert!(unit.starts >= 1, "{u} not restarted");
    }
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

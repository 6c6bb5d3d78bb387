//! Other renewers (issue 13): one vCenter simulator (govmomi vcsim, see `esxi.rs`) with
//! vCenter's ESXi auto-renew setting on, and one agent that also watches a certificate file.
//! The ESXi host certificates show as owned by `platform:vcenter-auto-renew` (wide, JSON and
//! `inventory show`); `plan create esxi-hosts` leaves them to vCenter and says so, unless
//! `--param take_over=true`; they are 20 days from expiry, past vCenter's renew point (30 days
//! ahead, polled every 5 days), so the inventory flags the renewal overdue naming the owner; the
//! file renewed outside certfleet shows as `unknown-renewer` after the next report (one replaced
//! by a shorter-lived certificate does not).

use std::time::Duration;

use serde_json::Value;

use crate::esxi::Vcsim;
use crate::support::{Controller, http_get, wait_for};

const AUTO: &str = "platform:vcenter-auto-renew";

/// A self-signed certificate for `name` expiring in `days`.
fn self_signed(name: &str, days: i64) -> String {
    let mut p = rcgen::CertificateParams::new(vec![name.into()]).unwrap();
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::days(1);
    p.not_after = now + time::Duration::days(days);
    let k = rcgen::KeyPair::generate().unwrap();
    p.self_signed(&k).unwrap().pem()
}

/// Writes `pem` over `path`, rescans, and returns the inventory item once it shows.
fn replace_and_rescan(c: &Controller, path: &std::path::Path, pem: &str) -> Value {
    std::fs::write(path, pem).unwrap();
    let fp = fingerprint(pem);
    c.cli(&["inventory", "rescan"]);
    wait_for(
        "the replaced file in the inventory",
        Duration::from_secs(30),
        || {
            of_role(c, "file.custom")
                .into_iter()
                .find(|i| i["fingerprint_sha256"] == fp.as_str())
        },
    )
}

fn fingerprint(pem: &str) -> String {
    let der = certfleet_common::pem::first_certificate(pem.as_bytes()).unwrap();
    certfleet_common::pki::sha256_hex(&der)
}

/// Inventory items (JSON) of `role`.
fn of_role(c: &Controller, role: &str) -> Vec<Value> {
    c.json(&["inventory"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["role"] == role)
        .cloned()
        .collect()
}

#[test]
fn platform_renewed_and_outside_replaced_certificates_are_owned_by_others_and_left_to_them() {
    let tmp = tempfile::tempdir().unwrap();
    let vc = Vcsim::start(
        &tmp.path().join("vc"),
        &serde_json::json!({
            "clusters": 1, "hosts_per_cluster": 2, "mode": "vmca", "host_days_left": 20,
            "auto_renew_threshold": 30,
            "user": "administrator@vsphere.local", "password": "pw",
        }),
    );
    let app_dir = tmp.path().join("app");
    std::fs::create_dir_all(&app_dir).unwrap();
    let app = app_dir.join("app.pem");
    std::fs::write(&app, self_signed("app.lab.local", 300)).unwrap();

    let c = Controller::start(&tmp.path().join("ctl"), &[]);
    let mut toml = format!(
        "platforms = [\"esxi\", \"files\"]\nscan_interval = \"2s\"\n\
[[files]]\npaths = [\"{}/*.pem\"]\n[settings]\n\"esxi.vim_url\" = \"{}\"\n\
\"esxi.vim_user\" = \"administrator@vsphere.local\"\n\"esxi.vim_password_file\" = \"{}\"\n\
\"esxi.vim_ca_file\" = \"{}\"\n",
        app_dir.display(),
        vc.manifest["url"].as_str().unwrap(),
        vc.settings("pw").password_file.display(),
        vc.dir.join("vmca-root.pem").display()
    );
    for h in vc.manifest["hosts"].as_array().unwrap() {
        toml.push_str(&format!(
            "\"esxi.endpoint.{}\" = \"{}\"\n",
            h["name"].as_str().unwrap(),
            h["endpoint"].as_str().unwrap()
        ));
    }
    let cfg = tmp.path().join("agent.toml");
    std::fs::write(&cfg, toml).unwrap();
    let state = c.enroll("vcsa");
    let _agent = c.run_agent(&state, Some(&cfg), &[]);
    c.wait_connected(1);

    // Owned by vCenter: JSON, the wide table's OWNER column and `inventory show`.
    let hosts = wait_for(
        "2 ESXi host certificates in the inventory",
        Duration::from_secs(30),
        || {
            let h = of_role(&c, "vsphere.esxi_host");
            let file = of_role(&c, "file.custom");
            (h.len() == 2 && file.len() == 1).then_some(h)
        },
    );
    for h in &hosts {
        assert_eq!(h["owner"], AUTO, "{h:#}");
    }
    assert_eq!(of_role(&c, "file.custom")[0]["owner"], "-");
    let wide = c.cli(&["inventory", "-o", "wide"]);
    let header = wide.lines().next().unwrap();
    assert!(header.contains("OWNER"), "{wide}");
    let host_lines: Vec<&str> = wide
        .lines()
        .filter(|l| l.contains("vsphere.esxi_host"))
        .collect();
    assert!(!host_lines.is_empty(), "{wide}");
    for l in &host_lines {
        assert!(l.contains(AUTO), "{l}\n{wide}");
    }
    let fp = hosts[0]["fingerprint_sha256"].as_str().unwrap();
    let show = c.cli(&["inventory", "show", fp]);
    assert!(
        show.lines()
            .any(|l| l.starts_with("renewed by") && l.ends_with(AUTO)),
        "{show}"
    );

    // 20 days left, vCenter renews 30 days ahead and polls every 5 days: overdue, naming the
    // owner.
    let overdue: Vec<&str> = wide
        .lines()
        .filter(|l| l.starts_with("HEALTH renewal.overdue"))
        .collect();
    assert_eq!(overdue.len(), 2, "{wide}");
    assert!(
        overdue
            .iter()
            .all(|l| l.contains(&format!("owned by {AUTO}"))),
        "{overdue:?}"
    );

    // /metrics counts them per owner, the overdue ones apart (the snapshot is up to 5 s old).
    let overdue_series = format!(
        r#"certfleet_certificates_renewal_overdue{{platform="vsphere",role="vsphere.esxi_host",owner="{AUTO}"}} 2"#
    );
    wait_for(
        "the overdue auto-renewed hosts in /metrics",
        Duration::from_secs(30),
        || {
            let m = http_get(&c.http, "/metrics")?;
            (m.contains(&overdue_series)
                && m.lines().any(|l| {
                    l.starts_with(&format!(
                        r#"certfleet_certificates_owned{{platform="vsphere",role="vsphere.esxi_host",owner="{AUTO}"}}"#
                    ))
                }))
            .then_some(())
        },
    );

    // No competing plan: nothing to renew (exit 5 with --fail-if-nothing), naming the owner,
    // unless taken over.
    let args = ["plan", "create", "esxi-hosts", "--expiring-within", "60d"];
    let mut strict = args.to_vec();
    strict.push("--fail-if-nothing");
    let refused = c.cli_as(&c.admin(), &strict);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(5), "{err}");
    assert!(
        err.contains("left to their own renewers") && err.contains(&format!("renewed by {AUTO}")),
        "{err}"
    );
    assert!(err.contains("take_over=true"), "{err}");
    let mut take = args.to_vec();
    take.extend(["--param", "take_over=true", "--dry-run"]);
    let dry = c.json(&take);
    let names: Vec<&str> = dry["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    for h in ["DC0_C0_H0", "DC0_C0_H1"] {
        assert!(
            names.iter().any(|n| n.ends_with(&format!("refresh {h}"))),
            "{h} not in the taken-over plan: {dry:#}"
        );
    }
    let bad = c.cli_as(
        &c.admin(),
        &[
            "plan",
            "create",
            "esxi-hosts",
            "--param",
            "take_over=yes",
            "--dry-run",
        ],
    );
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");

    // A shorter-lived certificate put in its place renews nothing: no owner.
    let item = replace_and_rescan(&c, &app, &self_signed("app.lab.local", 200));
    assert_eq!(item["owner"], "-", "{item:#}");
    // Renewed outside certfleet: owned by an unknown renewer after the next report.
    let new_pem = self_signed("app.lab.local", 400);
    let item = replace_and_rescan(&c, &app, &new_pem);
    let new_fp = fingerprint(&new_pem);
    assert_eq!(item["owner"], "unknown-renewer", "{item:#}");
    let show = c.cli(&["inventory", "show", &new_fp]);
    assert!(
        show.lines()
            .any(|l| l.starts_with("renewed by") && l.ends_with("unknown-renewer")),
        "{show}"
    );
}

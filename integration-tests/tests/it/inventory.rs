//! Fleet inventory through the controller: every simulated platform's agent reports, and what
//! the operator sees (`certfleet inventory`, `inventory show`, filters, CSV, metrics) is what the
//! agents found on the hosts, certificate for certificate.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use certfleet_integration_tests::sim::{default_sim_bin, demo};
use serde_json::Value;

use crate::support::{Controller, Proc, bin, wait_for};

fn fingerprints(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|c| c["fingerprint_sha256"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn the_controller_inventory_is_what_the_agents_found() {
    let tmp = tempfile::tempdir().unwrap();
    let hosts: Vec<(String, PathBuf, PathBuf, Option<String>)> =
        demo::build(&tmp.path().join("hosts"), &default_sim_bin())
            .unwrap()
            .into_iter()
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (
                    f[0].to_owned(),
                    PathBuf::from(f[1]),
                    PathBuf::from(f[2]),
                    f.get(3).map(|s| s.to_string()),
                )
            })
            .collect();
    let c = Controller::start(&tmp.path().join("ctl"), &["--metrics-per-certificate"]);
    let mut procs: Vec<Proc> = Vec::new();
    for (name, root, config, services) in &hosts {
        if let Some(svc) = services {
            let mut cmd = Command::new(bin("certfleet-sim"));
            cmd.arg("--root").arg(root).arg(svc);
            procs.push(Proc::spawn(
                cmd,
                tmp.path().join(format!("{name}-services.log")),
            ));
        }
        let state = c.enroll(name);
        procs.push(c.run_agent(&state, Some(config), &[]));
    }
    c.wait_connected(hosts.len());
    std::thread::sleep(Duration::from_secs(2)); // let the vCenter services come up before comparing
    c.cli(&["inventory", "rescan"]);

    // Per agent: the controller's view equals a local scan of the same host.
    for (name, _root, config, _) in &hosts {
        let out = Command::new(bin("certfleet-agent"))
            .args(["scan", "-o", "json", "--config"])
            .arg(config)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let local: Value = serde_json::from_slice(&out.stdout).unwrap();
        let local_fps = fingerprints(&local["certificates"]);
        assert!(
            !local_fps.is_empty(),
            "{name}: the local scan found nothing"
        );
        let fleet = wait_for(
            &format!("{name}'s inventory at the controller"),
            Duration::from_secs(40),
            || {
                let inv = c.json(&["inventory", "--agent", name]);
                let fps = fingerprints(&inv);
                (fps == local_fps).then_some(inv)
            },
        );
        for item in fleet.as_array().unwrap() {
            let fp = item["fingerprint_sha256"].as_str().unwrap();
            let l = local["certificates"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["fingerprint_sha256"] == fp)
                .unwrap();
            for field in [
                "subject",
                "issuer",
                "serial",
                "not_after",
                "not_before",
                "role",
            ] {
                assert_eq!(item[field], l[field], "{name} {fp} {field}");
            }
        }
    }

    // Filters.
    let vsphere = c.json(&["inventory", "--platform", "vsphere"]);
    assert!(!vsphere.as_array().unwrap().is_empty());
    assert!(
        vsphere
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["platform"] == "vsphere")
    );
    let vdsm = c.json(&["inventory", "--role", "ovirt.node.vdsm"]);
    let hosts_with_vdsm: BTreeSet<String> = vdsm
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|i| {
            i["locations"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["agent"].as_str().unwrap().to_owned())
        })
        .filter(|a| a.starts_with("ovirt-host"))
        .collect();
    assert_eq!(hosts_with_vdsm.len(), 3, "{vdsm:#}");
    let urgent = c.json(&["inventory", "--expiring-within", "30d"]);
    let sts = urgent
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["role"] == "vsphere.sts_signing")
        .expect("expired STS listed as urgent");
    assert_eq!(sts["status"], "expired");
    assert!(sts["impact"].as_str().unwrap().contains("log in"));
    let all = c.json(&["inventory"]);
    assert!(urgent.as_array().unwrap().len() < all.as_array().unwrap().len());
    crate::cas::check_demo_fleet(&c, &all);

    // Chains: the engine CA signs the VDSM certificates.
    // Found on the engine and on every host (as each host's copy of the CA): one certificate.
    let engine_ca = all
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["is_ca"] == true && i["subject"] == vdsm[0]["issuer"])
        .expect("engine CA");
    let ca_agents: BTreeSet<&str> = engine_ca["locations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["agent"].as_str().unwrap())
        .collect();
    assert!(
        ca_agents.contains("ovirt-engine-01") && ca_agents.contains("ovirt-host-01"),
        "{ca_agents:?}"
    );
    let signed = c.json(&[
        "inventory",
        "--issued-by",
        engine_ca["fingerprint_sha256"].as_str().unwrap(),
    ]);
    let signed_fps = fingerprints(&signed);
    for v in vdsm.as_array().unwrap() {
        assert!(
            signed_fps.contains(v["fingerprint_sha256"].as_str().unwrap()),
            "VDSM cert not listed as issued by the engine CA"
        );
    }
    let show = c.json(&[
        "inventory",
        "show",
        &vdsm[0]["fingerprint_sha256"].as_str().unwrap()[..20],
    ]);
    assert_eq!(
        show["chain"][0]["fingerprint_sha256"],
        engine_ca["fingerprint_sha256"]
    );
    assert_eq!(show["chain_complete"], true);
    let ca_show = c.json(&[
        "inventory",
        "show",
        engine_ca["fingerprint_sha256"].as_str().unwrap(),
    ]);
    assert!(ca_show["signs"].as_array().unwrap().len() >= 3);

    // CSV for spreadsheets.
    let csv = c.cli(&["inventory", "--expiring-within", "30d", "-o", "csv"]);
    assert!(
        csv.starts_with(
            "fingerprint_sha256,status,days_left,not_after,role,platform,owner,subject"
        )
    );
    assert!(csv.lines().count() > urgent.as_array().unwrap().len());

    // Metrics in the x509-certificate-exporter style.
    let metrics = c.metrics();
    let sts_na = certfleet_common::model::parse_time(sts["not_after"].as_str().unwrap()).unwrap();
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("x509_cert_not_after{") && l.contains("role=\"vsphere.sts_signing\"")
        })
        .unwrap_or_else(|| panic!("no STS not_after gauge in\n{metrics}"));
    assert!(
        line.contains("agent=\"vcsa-01\"") && line.contains("platform=\"vsphere\""),
        "{line}"
    );
    assert!(line.ends_with(&format!(" {sts_na}")), "{line}");
    assert!(
        metrics.lines().any(|l| l.starts_with(
            "certfleet_certificates{platform=\"vsphere\",role=\"vsphere.sts_signing\",expiry=\"expired\"}"
        ) && !l.ends_with(" 0")),
        "{metrics}"
    );

    // A certificate renewed on disk reaches the controller as a delta after a rescan.
    let (_, web_root, _, _) = hosts.iter().find(|h| h.0 == "web-01").unwrap();
    let tls = web_root.join("etc/nginx/tls");
    let ca = hosts
        .iter()
        .find(|h| h.0 == "corp-ca-01")
        .unwrap()
        .1
        .join("srv/ca");
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl req -new -key web.key -subj '/O=Corp/CN=web-01.lab.local' | openssl x509 -req -CA {ca}/ca.pem -CAkey {ca}/private/ca.key -days 200 -set_serial 99 -out web.pem 2>/dev/null",
            ca = ca.display()
        ))
        .current_dir(&tls)
        .status()
        .unwrap();
    assert!(st.success());
    c.cli(&["inventory", "rescan", "web-01"]);
    wait_for(
        "renewed web certificate in the fleet inventory",
        Duration::from_secs(30),
        || {
            let inv = c.json(&["inventory", "--agent", "web-01", "--role", "file.renewable"]);
            let days = inv
                .as_array()
                .unwrap()
                .first()
                .map(|i| i["days_left"].as_i64().unwrap())
                .unwrap_or(0);
            (days >= 198).then_some(())
        },
    );
    drop(procs);
}

/// Fleet scale, finding 1: an agent whose inventory is larger than the controller takes in one
/// message sends it in chunks (the controller assembles them); `certfleet inventory -o json`
/// over an answer larger than gRPC's default 4 MiB works (the CLI reads it page by page); a
/// page is bounded and DER comes only when asked for; `inventory cas` reads every page too (more
/// leaves than one page holds, all counted under their CA).
#[test]
fn a_large_inventory_is_sent_in_chunks_and_read_in_pages_without_der() {
    use certfleet_common::proto as pb;
    use certfleet_common::proto::operator_client::OperatorClient;
    use certfleet_integration_tests::sim::{Lifetime, SimCa, dn};

    // More leaves than the controller's largest page (5,000), plus their CA.
    const FILES: usize = 5_100;
    const CERTS: usize = FILES + 1;
    let tmp = tempfile::tempdir().unwrap();
    let certs = tmp.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let ca = SimCa::new(dn(&[("CN", "big CA")]), Lifetime::days(1, 3650), false).unwrap();
    for i in 0..FILES {
        let host = format!("host-{i}.big.example");
        let c = ca
            .issue(
                dn(&[("O", "certfleet scale test"), ("CN", &host)]),
                &[&host],
                Lifetime::days(1, (i % 300) as i64 + 1),
                false,
                false,
            )
            .unwrap();
        std::fs::write(certs.join(format!("c{i:05}.pem")), c.cert_pem).unwrap();
    }
    std::fs::write(certs.join("ca.pem"), &ca.cert_pem).unwrap();
    let config = tmp.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "platforms = [\"files\"]\n[[files]]\npaths = [\"{}/*.pem\"]\n",
            certs.display()
        ),
    )
    .unwrap();
    // 1 MiB per message: the agent's ~5 MB report must come in chunks.
    let c = Controller::start(&tmp.path().join("ctl"), &["--max-report-bytes", "1048576"]);
    let state = c.enroll("big");
    let agent = c.run_agent(&state, Some(&config), &[]);
    c.wait_connected(1);

    let rt = tokio::runtime::Runtime::new().unwrap();
    // The lazy channel spawns its connection task on this runtime.
    let _in_runtime = rt.enter();
    let read = |f: &str| std::fs::read_to_string(c.admin().join(f)).unwrap();
    let ch = certfleet_common::tls::mtls_channel(
        &c.addr,
        &read("ca.pem"),
        &read("cert.pem"),
        &read("key.pem"),
    )
    .unwrap();
    let mut op = OperatorClient::new(ch).max_decoding_message_size(64 << 20);
    wait_for(
        "the whole inventory at the controller",
        Duration::from_secs(60),
        || {
            let (mut seen, mut token) = (0, String::new());
            loop {
                let page = rt
                    .block_on(op.inventory(pb::InventoryQuery {
                        page_size: 5_000,
                        page_token: token,
                        ..Default::default()
                    }))
                    .ok()?
                    .into_inner();
                seen += page.items.len();
                token = page.next_page_token;
                if token.is_empty() {
                    break;
                }
            }
            (seen == CERTS).then_some(())
        },
    );
    assert!(
        agent.log_text().contains("inventory report sent in chunks"),
        "{}",
        agent.log_text()
    );
    // The CLI reads the whole answer (larger than 4 MiB) page by page.
    let out = c.cli(&["inventory", "--agent", "big", "-o", "json"]);
    assert!(
        out.len() > 4 << 20,
        "the answer should be larger than 4 MiB: {} bytes",
        out.len()
    );
    let all: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(fingerprints(&all).len(), CERTS);
    // The whole fleet's listing comes most urgent first in two pages and is written as they
    // arrive: every certificate once, in the order the CLI itself sorted into before.
    let fleet: Value = serde_json::from_str(&c.cli(&["inventory", "-o", "json"])).unwrap();
    assert_eq!(fleet.as_array().unwrap().len(), CERTS);
    assert_eq!(fingerprints(&fleet), fingerprints(&all));
    let order: Vec<(u8, String, String)> = fleet
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let rank = match c["status"].as_str().unwrap() {
                "expired" => 0,
                "expiring" => 1,
                _ => 2,
            };
            let s = |k: &str| c[k].as_str().unwrap().to_owned();
            (rank, s("not_after"), s("fingerprint_sha256"))
        })
        .collect();
    assert!(order.is_sorted(), "not most urgent first");
    assert!(
        order.iter().any(|o| o.0 == 1) && order.iter().any(|o| o.0 == 2),
        "expiring and valid certificates both listed"
    );
    let soon = c.json(&["inventory", "--expiring-within", "30d"]);
    let n_soon = soon.as_array().unwrap().len();
    assert!(n_soon > 0 && n_soon < FILES, "{n_soon}");
    // The CA forecast reads the inventory page by page: every leaf is counted under its CA.
    let cas = c.json(&["inventory", "cas"]);
    let big = cas
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["subject"].as_str().is_some_and(|s| s.contains("big CA")))
        .unwrap_or_else(|| panic!("no forecast for the big CA: {cas:#}"));
    assert_eq!(big["leaves"].as_array().unwrap().len(), FILES);

    // The RPC itself: a bounded page without DER, and DER when asked.
    rt.block_on(async {
        let page = op
            .inventory(pb::InventoryQuery {
                page_size: 1_000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page.items.len(), 1_000);
        assert!(!page.next_page_token.is_empty());
        assert!(
            page.items
                .iter()
                .all(|i| i.certificate.as_ref().unwrap().der.is_empty())
        );
        let next = op
            .inventory(pb::InventoryQuery {
                page_size: 1_000,
                page_token: page.next_page_token.clone(),
                with_der: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(next.items.len(), 1_000);
        let first = next.items[0].certificate.as_ref().unwrap();
        assert!(first.fingerprint_sha256 > page.next_page_token);
        for i in &next.items {
            let cert = i.certificate.as_ref().unwrap();
            assert_eq!(
                certfleet_common::pki::sha256_hex(&cert.der),
                cert.fingerprint_sha256
            );
        }
    });
}

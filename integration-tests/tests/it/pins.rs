//! Pins (issue 13): one simulated VCSA whose Machine SSL is changed outside certfleet, with three
//! declared consumers (two re-trusted by a command, one by a webhook: a consumer's HTTP API on
//! loopback that takes the PEM and checks the bearer token); the inventory shows the stale
//! `vpx_ext` thumbprint and declared pins, a machine-ssl plan re-trusts the declared pins (one
//! re-trust command fails with its output), and the pin check after the plan records the pin
//! left stale.

use std::time::Duration;

use certfleet_integration_tests::sim::vcsa::{self, VcsaSpec, VcsaVersion};
use certfleet_integration_tests::sim::{Lifetime, SimHost};
use serde_json::Value;

use crate::support::{self, Controller, wait_for};

/// A consumer's re-trust API on loopback: each POST must carry `Bearer TOKEN`; its JSON `pem`
/// is written to `store` (what the consumer pins then) and answered 200, anything else 401.
/// Returns the URL and the requests received.
fn webhook_consumer(
    token: &'static str,
    store: std::path::PathBuf,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://127.0.0.1:{}/api/v1/trust",
        listener.local_addr().unwrap().port()
    );
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut r = BufReader::new(conn.try_clone().unwrap());
            let mut head = String::new();
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                head.push_str(&line);
            }
            let mut body = vec![0u8; len];
            r.read_exact(&mut body).ok();
            let authorized = head.contains(&format!("authorization: Bearer {token}\r\n"));
            let pem = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v["pem"].as_str().map(str::to_owned));
            let answer = match (authorized, pem) {
                (true, Some(pem)) => {
                    std::fs::write(&store, pem).unwrap();
                    "HTTP/1.1 200 OK\r\nContent-Length: 8\r\nConnection: close\r\n\r\ntrusted\n"
                }
                _ => {
                    "HTTP/1.1 401 Unauthorized\r\nContent-Length: 9\r\nConnection: close\r\n\r\ndenied\r\n\n"
                }
            };
            conn.write_all(answer.as_bytes()).ok();
            log.lock()
                .unwrap()
                .push(format!("{head}\n{}", String::from_utf8_lossy(&body)));
        }
    });
    (url, seen)
}

fn fingerprint(pem: &str) -> String {
    let der = certfleet_common::pem::first_certificate(pem.as_bytes()).unwrap();
    certfleet_common::pki::sha256_hex(&der)
}

fn pin<'a>(show: &'a Value, name: &str) -> Option<&'a Value> {
    show["certificate"]["pins"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)
}

#[test]
fn pins_go_stale_after_an_outside_change_and_a_plan_retrusts_them() {
    vcsa::vmdir::require_slapd().unwrap();
    vcsa::vcdb::require_postgres().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let host = SimHost::new(dir.path().join("vcsa"), support::bin("certfleet-sim")).unwrap();
    let spec = VcsaSpec::new(VcsaVersion::V70, "vcsa01.lab.local")
        .with("machine_ssl", Lifetime::days(720, 10));
    let v = vcsa::build(&host, &spec).unwrap();
    let _services = v.start_services().unwrap();
    let old_pem = crate::vsphere_rotation::getcert(&v, "MACHINE_SSL_CERT", "__MACHINE_CERT");
    let consumers = dir.path().join("consumers");
    std::fs::create_dir_all(&consumers).unwrap();
    let backup = consumers.join("backup.pem");
    let monitor = consumers.join("monitor.pem");
    let nsx = consumers.join("nsx.pem");
    std::fs::write(&backup, &old_pem).unwrap();
    std::fs::write(&monitor, &old_pem).unwrap();
    std::fs::write(&nsx, &old_pem).unwrap();
    let (nsx_url, nsx_requests) = webhook_consumer("nsx-t0ken", nsx.clone());
    host.write("/etc/certfleet/nsx.token", "nsx-t0ken\n", 0o600)
        .unwrap();
    let cfg = v.agent_config().unwrap();
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!(
        "\n[[pins]]\nname = \"backup\"\ncert_role = \"vsphere.machine_ssl\"\n\
         read_command = [\"/bin/cat\", {b:?}]\nretrust_command = [\"/usr/bin/tee\", {b:?}]\n\
         \n[[pins]]\nname = \"nsx\"\ncert_role = \"vsphere.machine_ssl\"\n\
         read_command = [\"/bin/cat\", {n:?}]\nretrust_webhook = {nsx_url:?}\n\
         webhook_token_file = \"/etc/certfleet/nsx.token\"\n\
         \n[[pins]]\nname = \"monitor\"\ncert_role = \"vsphere.machine_ssl\"\n\
         read_command = [\"/bin/cat\", {m:?}]\nretrust_command = [\"/usr/bin/tee\", {bad:?}]\n",
        n = nsx.display().to_string(),
        b = backup.display().to_string(),
        m = monitor.display().to_string(),
        bad = consumers.join("missing/monitor.pem").display().to_string(),
    ));
    std::fs::write(&cfg, text).unwrap();

    let c = Controller::start(&dir.path().join("ctl"), &[]);
    let state = c.enroll("vc1");
    let root = v.host.root.display().to_string();
    let _agent = c.run_agent(&state, Some(&cfg), &["--root", &root]);
    c.wait_connected(1);

    // Machine SSL replaced directly in VECS: nothing re-trusted it.
    v.renew_machine_ssl_without_restart(Lifetime::days(720, 10))
        .unwrap();
    let new_fp = fingerprint(&crate::vsphere_rotation::getcert(
        &v,
        "MACHINE_SSL_CERT",
        "__MACHINE_CERT",
    ));
    c.cli(&["inventory", "rescan"]);
    let show = wait_for(
        "stale pins in the inventory",
        Duration::from_secs(60),
        || {
            let out = c.cli_as(&c.admin(), &["inventory", "show", &new_fp, "-o", "json"]);
            let s: Value = serde_json::from_slice(&out.stdout).ok()?;
            let ok = pin(&s, "com.vmware.vsan.health").is_some_and(|p| p["state"] == "stale");
            if !ok {
                std::thread::sleep(Duration::from_millis(300));
            }
            ok.then_some(s)
        },
    );
    assert_eq!(pin(&show, "backup").unwrap()["state"], "stale", "{show:#}");
    assert_eq!(pin(&show, "monitor").unwrap()["state"], "stale", "{show:#}");
    assert_eq!(pin(&show, "nsx").unwrap()["state"], "stale", "{show:#}");
    let text = c.cli(&["inventory", "show", &new_fp]);
    assert!(
        text.contains("stale   vpx_ext com.vmware.vsan.health on vc1"),
        "{text}"
    );
    // /metrics names each stale pin (alert CertfleetPinStale) and counts them per state.
    // (The fleet part of a scrape is reused for 5 s: wait for one rendered after the rescan.)
    let m = wait_for("stale pins in /metrics", Duration::from_secs(15), || {
        let m = c.metrics();
        m.contains("certfleet_pin_stale{").then_some(m)
    });
    for (source, name) in [
        ("vpx_ext", "com.vmware.vsan.health"),
        ("declared", "backup"),
        ("declared", "monitor"),
        ("declared", "nsx"),
    ] {
        let found = m.lines().any(|l| {
            l.starts_with("certfleet_pin_stale{")
                && l.contains(&format!("source=\"{source}\",name=\"{name}\""))
                && l.ends_with(" 1")
        });
        assert!(found, "no stale series for {source} {name}:\n{m}");
    }
    assert!(
        m.lines().any(|l| l.starts_with("certfleet_pins{")
            && l.contains("source=\"declared\",state=\"stale\"")
            && l.ends_with(" 3")),
        "{m}"
    );

    // pins-retrust renews nothing and re-trusts what the outside change left stale: the
    // vpx_ext thumbprint (and the Lookup Service trust) to VECS's certificate, then the declared
    // pins; monitor's command fails.
    let p = c.json(&["plan", "create", "pins-retrust", "--run"]);
    let id = p["id"].as_str().unwrap().to_owned();
    let p = wait_for(
        "pins-retrust and its pin check",
        Duration::from_secs(120),
        || {
            let p = c.json(&["plan", "show", &id]);
            let done = p["message"]
                .as_str()
                .unwrap_or("")
                .contains("pin check on vc1");
            if !done {
                std::thread::sleep(Duration::from_millis(300));
            }
            done.then_some(p)
        },
    );
    let actions: Vec<(&str, &str)> = p["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["action"].as_str().unwrap(), s["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actions,
        [
            ("vsphere.retrust_pins", "succeeded"),
            ("pins.retrust", "succeeded"),
            ("pins.retrust", "succeeded"),
            ("pins.retrust", "failed"),
        ],
        "{p:#}"
    );
    assert!(
        p["steps"][0]["message"]
            .as_str()
            .unwrap()
            .contains("1 vpx_ext row(s) now trust"),
        "{p:#}"
    );
    assert_eq!(
        new_fp,
        fingerprint(&crate::vsphere_rotation::getcert(
            &v,
            "MACHINE_SSL_CERT",
            "__MACHINE_CERT",
        )),
        "pins-retrust changed the certificate"
    );
    let show = c.json(&["inventory", "show", &new_fp]);
    for (name, state) in [
        ("com.vmware.vsan.health", "match"),
        ("backup", "match"),
        ("nsx", "match"),
        ("monitor", "stale"),
    ] {
        assert_eq!(
            pin(&show, name).unwrap()["state"],
            state,
            "{name}: {show:#}"
        );
    }

    // A machine-ssl plan re-trusts the declared pins; monitor's command fails.
    let p = wait_for("plan create", Duration::from_secs(30), || {
        let out = c.cli_as(
            &c.admin(),
            &[
                "plan",
                "create",
                "vsphere-machine-ssl",
                "--expiring-within",
                "90d",
                "--run",
                "-o",
                "json",
            ],
        );
        serde_json::from_slice::<Value>(&out.stdout).ok()
    });
    let id = p["id"].as_str().unwrap().to_owned();
    let p = wait_for("pin check on the plan", Duration::from_secs(300), || {
        let p = c.json(&["plan", "show", &id]);
        let done = p["message"]
            .as_str()
            .unwrap_or("")
            .contains("pin check on vc1");
        if !done {
            std::thread::sleep(Duration::from_millis(500));
        }
        done.then_some(p)
    });
    assert_eq!(p["state"], "failed", "{p:#}");
    let steps = p["steps"].as_array().unwrap();
    let step = |n: &str| {
        steps
            .iter()
            .find(|s| s["action"] == "pins.retrust" && s["args"]["name"] == n)
            .unwrap_or_else(|| panic!("no retrust step for {n}: {p:#}"))
    };
    assert_eq!(step("backup")["state"], "succeeded", "{p:#}");
    assert_eq!(step("nsx")["state"], "succeeded", "{p:#}");
    assert!(
        step("nsx")["commands"]
            .to_string()
            .contains("POST retrust_webhook"),
        "{p:#}"
    );
    let requests = nsx_requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 2, "{requests:#?}");
    assert!(
        requests[1].starts_with("POST /api/v1/trust HTTP/1.1\r\n")
            && requests[1].contains("\"pin\":\"nsx\"")
            && requests[1].contains("\"cert_role\":\"vsphere.machine_ssl\""),
        "{requests:#?}"
    );
    assert_eq!(step("monitor")["state"], "failed", "{p:#}");
    let msg = step("monitor")["message"].as_str().unwrap();
    assert!(msg.contains("tee") && msg.contains("No such file"), "{msg}");
    let m = p["message"].as_str().unwrap();
    assert!(m.contains("1 stale pin(s): declared monitor"), "{m}");
    let audit = c.json(&["audit"]).to_string();
    assert!(audit.contains("plan.pins_stale"), "{audit}");

    let now_fp = fingerprint(&crate::vsphere_rotation::getcert(
        &v,
        "MACHINE_SSL_CERT",
        "__MACHINE_CERT",
    ));
    let show = c.json(&["inventory", "show", &now_fp]);
    assert_eq!(pin(&show, "backup").unwrap()["state"], "match", "{show:#}");
    assert_eq!(pin(&show, "nsx").unwrap()["state"], "match", "{show:#}");
    assert_eq!(
        pin(&show, "com.vmware.vsan.health").unwrap()["state"],
        "match",
        "{show:#}"
    );
    assert_eq!(pin(&show, "monitor").unwrap()["state"], "stale", "{show:#}");
    // Re-trusted pins leave /metrics; the one whose re-trust failed stays.
    let m = wait_for(
        "re-trusted pins gone from /metrics",
        Duration::from_secs(15),
        || {
            let m = c.metrics();
            (m.matches("certfleet_pin_stale{").count() == 1).then_some(m)
        },
    );
    let stale: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("certfleet_pin_stale{"))
        .collect();
    assert_eq!(stale.len(), 1, "{stale:#?}");
    assert!(stale[0].contains("name=\"monitor\""), "{stale:#?}");
}

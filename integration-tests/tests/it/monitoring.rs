//! The monitoring kit against a live controller: `/metrics` in the x509-certificate-exporter's
//! names and labels (per-certificate mode) and aggregated (default), certfleet's own series,
//! every metric the shipped alert rules and Grafana dashboard query really exported, `/readyz`,
//! and `/metrics` over HTTPS with the controller's certificate. One fleet setup for all of it.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::{Proc, bin, free_port, http_get, wait_for};

/// Metric names (`certfleet_…`, `x509_…`) a rules file or dashboard queries.
fn queried_metrics(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices(['c', 'x']) {
        let rest = &text[i..];
        if !(rest.starts_with("certfleet_") || rest.starts_with("x509_")) {
            continue;
        }
        if text[..i]
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        {
            continue;
        }
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        out.insert(name);
    }
    out
}

/// Metric families a scrape declares (`# TYPE name kind`); counters also by their `_total`.
fn exported(scrape: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for l in scrape.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            let mut f = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (f.next(), f.next()) {
                out.insert(name.to_owned());
                if kind == "counter" {
                    out.insert(format!("{name}_total"));
                }
            }
        }
    }
    out
}

/// The sample line of `name` whose labels contain every one of `labels`.
fn sample<'a>(scrape: &'a str, name: &str, labels: &[&str]) -> Option<&'a str> {
    scrape.lines().find(|l| {
        (l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            && labels.iter().all(|x| l.contains(x))
    })
}

fn value(line: &str) -> i64 {
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// `curl` over HTTPS trusting only `ca`: the body, or None when the request failed.
fn curl_https(ca: &Path, addr: &str, path: &str) -> Option<String> {
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "5", "--cacert"])
        .arg(ca)
        .arg(format!("https://{addr}{path}"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn metrics_rules_and_dashboard_match_a_live_controller() {
    let tmp = tempfile::tempdir().unwrap();
    // A CA host and one application host whose certificate (serial 1) expires in 5 days.
    let mut f = crate::rotation::fleet(tmp.path(), 1, &["--metrics-per-certificate"]);
    // A renewal policy that needs approval: its first evaluation creates a plan that waits.
    f.c.cli(&["policy", "set", "file.renewable", "--renew-within", "30d"]);
    let c = &f.c;

    // `certfleet-agent check-config` on the application host: its real config is fine (the
    // unit it restarts exists for the host's systemctl); a broken one lists every problem.
    let check = |cfg: &Path| {
        let out = Command::new(bin("certfleet-agent"))
            .args(["check-config", "--config"])
            .arg(cfg)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (app_root, app_cfg) = (&f.apps[0].1.root, &f.apps[0].2);
    let (code, text) = check(app_cfg);
    assert_eq!(code, Some(0), "{text}");
    let bad = tmp.path().join("bad-agent.toml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(app_cfg).unwrap().replace(
            "restart = [\"app\"]",
            "restart = [\"app\", \"nosuch\"]\nowner = \"no-such-user\"\nmode = \"rw\"",
        ) + "[[files]]\npaths = [\"/etc/app/*.p12\"]\npassword = \"inline\"\npasswrd = \"x\"\n",
    )
    .unwrap();
    let (code, text) = check(&bad);
    assert_eq!(code, Some(1), "{text}");
    for want in [
        "5 problem(s)",
        "files[0].passwrd: unknown key",
        "files[0].password: a password inline",
        "renew[0]: mode \"rw\" is not an octal file mode",
        "renew[0].owner: no user \"no-such-user\"",
        "renew[0].restart: no systemd unit \"nosuch\"",
    ] {
        assert!(
            text.contains(want),
            "missing {want:?} in\n{text} (root {})",
            app_root.display()
        );
    }

    // app1 restarted with a declared pin (a load balancer pinning its certificate by a
    // thumbprint it no longer has): CertfleetPinStale's series.
    f.procs[1].kill9();
    let mut text = std::fs::read_to_string(app_cfg).unwrap();
    text.push_str(
        "[[pins]]\nname = \"lb-pool\"\ncert_path = \"/etc/app/tls/app.pem\"\nthumbprint = \"00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33\"\n",
    );
    std::fs::write(app_cfg, text).unwrap();
    f.procs[1] = c.run_agent(&f.states[1], Some(app_cfg), &[]);
    // The CA host restarted with a declared renewer of its CA certificate (the corporate PKI
    // renews it 10 years ahead, so it is overdue now): CertfleetOwnerRenewalOverdue's series.
    f.procs[0].kill9();
    let ca_cfg = f.ca_root.join("agent.toml");
    let mut text = std::fs::read_to_string(&ca_cfg).unwrap();
    text.push_str(
        "[[renewers]]\nname = \"corp-pki\"\nroles = [\"file.ca\"]\nrenew_before = \"3650d\"\n",
    );
    std::fs::write(&ca_cfg, text).unwrap();
    f.procs[0] = c.run_agent(&f.states[0], Some(&ca_cfg), &[]);

    // Per-certificate series, in the exporter's names and labels plus certfleet's.
    let m = wait_for(
        "the policy's plan awaiting approval and the stale pin in /metrics",
        Duration::from_secs(40),
        || {
            let m = c.metrics();
            sample(
                &m,
                "certfleet_plan_created_seconds",
                &[
                    "origin=\"policy:file.renewable\"",
                    "state=\"awaiting_approval\"",
                ],
            )
            .and(sample(&m, "certfleet_pin_stale", &["name=\"lb-pool\""]))
            .and(sample(
                &m,
                "certfleet_certificates_renewal_overdue",
                &["role=\"file.ca\"", "owner=\"platform:corp-pki\""],
            ))
            .map(|_| m.clone())
        },
    );
    let pin = ["agent=\"app1\"", "source=\"declared\""];
    assert_eq!(
        value(
            sample(
                &m,
                "certfleet_pin_stale",
                &[pin[0], pin[1], "cert_role=\"file.renewable\""]
            )
            .unwrap()
        ),
        1,
        "{m}"
    );
    assert_eq!(
        value(sample(&m, "certfleet_pins", &[pin[0], pin[1], "state=\"stale\""]).unwrap()),
        1,
        "{m}"
    );
    assert_eq!(
        value(sample(&m, "certfleet_pins", &[pin[0], pin[1], "state=\"match\""]).unwrap()),
        0,
        "{m}"
    );
    let inv = c.json(&["inventory", "--role", "file.renewable"]);
    let soon = &inv[0];
    let na = certfleet_common::model::parse_time(soon["not_after"].as_str().unwrap()).unwrap();
    let nb = certfleet_common::model::parse_time(soon["not_before"].as_str().unwrap()).unwrap();
    let want = [
        "agent=\"app1\"",
        "platform=\"any\"",
        "role=\"file.renewable\"",
        "serial_number=\"1\"",
        "issuer_O=\"Corp\"",
        "issuer_CN=\"Corp Issuing CA\"",
        "subject_O=\"Corp\"",
        "subject_CN=\"app1.example\"",
        "filepath=\"/etc/app/tls/app.pem\"",
        "filename=\"app.pem\"",
    ];
    let line = sample(&m, "x509_cert_not_after", &want).unwrap_or_else(|| panic!("{m}"));
    assert_eq!(value(line), na, "{line}");
    assert_eq!(
        value(sample(&m, "x509_cert_not_before", &want).unwrap()),
        nb
    );
    assert_eq!(value(sample(&m, "x509_cert_expired", &want).unwrap()), 0);

    // Aggregated counts and certfleet's own certificates.
    let role = ["platform=\"any\"", "role=\"file.renewable\""];
    let count = |m: &str, expiry: &str| {
        let e = format!("expiry=\"{expiry}\"");
        value(
            sample(m, "certfleet_certificates", &[role[0], role[1], &e])
                .unwrap_or_else(|| panic!("{m}")),
        )
    };
    assert_eq!(count(&m, "7d"), 1, "{m}");
    assert_eq!(count(&m, "later"), 0, "{m}");
    assert_eq!(count(&m, "expired"), 0, "{m}");
    assert_eq!(
        value(
            sample(
                &m,
                "certfleet_certificates_lifetime_left",
                &[role[1], "le=\"0.1\""]
            )
            .unwrap()
        ),
        0,
        "a 5-day certificate issued today still has most of its lifetime: {m}"
    );
    assert!(sample(&m, "certfleet_build_info", &["version=\""]).is_some_and(|l| value(l) == 1));
    let now = certfleet_common::model::now();
    let ca_na = value(sample(&m, "certfleet_fleet_ca_not_after_seconds", &[]).unwrap());
    assert!(ca_na > now + 300 * 86_400, "fleet CA: {ca_na}");
    let ctl_na = value(
        sample(
            &m,
            "certfleet_controller_certificate_not_after_seconds",
            &[],
        )
        .unwrap(),
    );
    assert!(ctl_na > now + 30 * 86_400, "controller: {ctl_na}");
    let agent_na = value(
        sample(
            &m,
            "certfleet_agent_certificate_not_after_seconds",
            &["agent=\"app1\""],
        )
        .unwrap(),
    );
    assert!(agent_na > now, "{m}");
    assert_eq!(
        value(
            sample(
                &m,
                "certfleet_agent_earliest_not_after_seconds",
                &["agent=\"app1\""]
            )
            .unwrap()
        ),
        na
    );
    assert_eq!(
        value(sample(&m, "certfleet_agent_connected", &["agent=\"app1\""]).unwrap()),
        1
    );
    assert_eq!(
        value(sample(&m, "certfleet_agents_missing", &[]).unwrap()),
        0
    );
    assert_eq!(
        value(sample(&m, "certfleet_plans", &["state=\"awaiting_approval\""]).unwrap()),
        1
    );
    assert!(
        value(sample(&m, "certfleet_plan_steps", &["state=\"pending\""]).unwrap()) > 0,
        "{m}"
    );
    let pol = ["role=\"file.renewable\""];
    assert_eq!(
        value(sample(&m, "certfleet_policy_certificates_due", &pol).unwrap()),
        1
    );
    assert_eq!(
        value(sample(&m, "certfleet_policy_earliest_not_after_seconds", &pol).unwrap()),
        na
    );
    assert_eq!(
        value(sample(&m, "certfleet_policy_renew_within_seconds", &pol).unwrap()),
        30 * 86_400
    );
    // Its plan is open: the next evaluation creates nothing.
    assert_eq!(
        value(sample(&m, "certfleet_policy_will_fire", &pol).unwrap()),
        0
    );
    assert_eq!(
        value(sample(&m, "certfleet_plans", &["state=\"failed\""]).unwrap()),
        0
    );

    // Every metric the shipped rules and dashboard query is one the controller exports.
    let kit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/monitoring");
    let names = exported(&m);
    for file in ["prometheus/certfleet.rules.yml", "grafana/certfleet.json"] {
        let text = std::fs::read_to_string(kit.join(file)).unwrap();
        let queried = queried_metrics(&text);
        assert!(queried.len() > 5, "{file}: {queried:?}");
        let unknown: Vec<&String> = queried.difference(&names).collect();
        assert!(
            unknown.is_empty(),
            "{file} queries metrics the controller does not export: {unknown:?}\nexported: {names:?}"
        );
    }

    // /readyz: store open, engine running.
    assert!(
        http_get(&c.http, "/readyz").is_some_and(|b| b.starts_with("ready")),
        "{:?}",
        http_get(&c.http, "/readyz")
    );

    // An agent that goes away is missing (its series stay, connected 0).
    f.procs[1].kill9();
    wait_for(
        "agent app1 counted missing",
        Duration::from_secs(30),
        || {
            let m = c.metrics();
            (sample(&m, "certfleet_agents_missing", &[]).map(value) == Some(1)
                && sample(&m, "certfleet_agent_connected", &["agent=\"app1\""]).map(value)
                    == Some(0))
            .then_some(())
        },
    );

    // Restarted with HTTPS on the monitoring port and the aggregated default: the fleet CA
    // verifies it, plain HTTP gets nothing, and no per-certificate series are exported.
    let c = &mut f.c;
    c.proc.as_mut().unwrap().term();
    let https = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(bin("certfleet"));
    cmd.args(["serve", "--data-dir"])
        .arg(c.dir.join("data"))
        .args(["--listen", &c.addr, "--http", &https, "--http-tls"]);
    let _served = Proc::spawn(cmd, tmp.path().join("controller-https.log"));
    let ca = c.dir.join("data/ca/ca.pem");
    let ready = wait_for("/readyz over HTTPS", Duration::from_secs(20), || {
        curl_https(&ca, &https, "/readyz")
    });
    assert!(ready.starts_with("ready"), "{ready}");
    assert!(http_get(&https, "/healthz").is_none());
    let m = curl_https(&ca, &https, "/metrics").unwrap();
    assert!(!m.contains("x509_cert_not_after{"), "{m}");
    assert!(
        sample(
            &m,
            "certfleet_certificates",
            &["role=\"file.renewable\"", "expiry=\"7d\""]
        )
        .is_some_and(|l| value(l) == 1),
        "{m}"
    );
    c.proc = None;
}

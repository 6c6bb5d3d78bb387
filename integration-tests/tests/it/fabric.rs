//! The fleet fabric end to end: real `certfleet` and `certfleet-agent` processes on loopback.

use std::path::Path;
use std::time::Duration;

use certfleet_common::proto as pb;
use certfleet_common::proto::agent_link_client::AgentLinkClient;
use certfleet_common::proto::enrollment_client::EnrollmentClient;
use certfleet_common::proto::operator_client::OperatorClient;

use crate::support::{Controller, wait_for};

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn audit_actions(c: &Controller) -> Vec<(String, String)> {
    c.json(&["audit"])
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["target"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn agent_id(state: &Path) -> String {
    let meta: serde_json::Value = serde_json::from_str(&read(&state.join("agent.json"))).unwrap();
    meta["agent_id"].as_str().unwrap().to_owned()
}

#[test]
fn three_agents_enroll_connect_and_are_listed() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Controller::start(tmp.path(), &[]);
    let states: Vec<_> = ["vc1", "engine1", "gkeadmin1"]
        .iter()
        .map(|n| c.enroll(n))
        .collect();
    // Keys are made on the host, 0600, and never leave it.
    for s in &states {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(s.join("key.pem"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{}", s.display());
    }
    let mut procs: Vec<_> = states.iter().map(|s| c.run_agent(s, None, &[])).collect();
    c.wait_connected(3);

    let agents = c.agents();
    let mut names: Vec<&str> = agents.iter().map(|a| a["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["engine1", "gkeadmin1", "vc1"]);
    for a in &agents {
        for field in [
            "id",
            "name",
            "hostname",
            "platforms",
            "version",
            "connected",
            "last_seen",
            "cert_not_after",
        ] {
            assert!(
                a.get(field).is_some(),
                "agents list -o json lacks {field}: {a}"
            );
        }
        assert_eq!(a["state"], "active");
        assert!(!a["hostname"].as_str().unwrap().is_empty());
        let not_after =
            certfleet_common::model::parse_time(a["cert_not_after"].as_str().unwrap()).unwrap();
        let days = (not_after - certfleet_common::model::now()) / 86_400;
        assert!(
            (29..=30).contains(&days),
            "default agent certificate lifetime is 30 days, got {days}"
        );
    }
    let shown = c.json(&["agents", "show", "vc1"]);
    assert_eq!(shown["name"], "vc1");

    let metrics = c.metrics();
    assert!(
        metrics.contains("certfleet_agents_connected 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("certfleet_enrollments_total{kind=\"ok\"} 3"),
        "{metrics}"
    );
    let enrolls = audit_actions(&c)
        .into_iter()
        .filter(|(a, _)| a == "agent.enroll")
        .count();
    assert_eq!(enrolls, 3);

    // SIGTERM stops an agent cleanly and the controller notices.
    assert_eq!(
        procs[0].term(),
        Some(0),
        "agent did not exit 0 on SIGTERM:\n{}",
        procs[0].log_text()
    );
    c.wait_connected(2);
    assert!(procs[0].log_text().contains("stopped"));
    // And the controller stops cleanly on SIGTERM too.
    assert_eq!(c.proc.as_ref().map(|_| ()), Some(()));
    let mut ctl = c.proc.unwrap();
    assert_eq!(
        ctl.term(),
        Some(0),
        "controller did not exit 0 on SIGTERM:\n{}",
        ctl.log_text()
    );
    procs.clear();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_rules() {
    certfleet_common::tls::install_crypto_provider();
    let tmp = tempfile::tempdir().unwrap();
    let c = Controller::start(&tmp.path().join("a"), &[]);
    let other = Controller::start(&tmp.path().join("b"), &[]);
    let ca = read(&c.admin().join("ca.pem"));

    // 1. Only enrollment works without a client certificate.
    let anon = certfleet_common::tls::anonymous_channel(&c.addr, &ca).unwrap();
    let err = OperatorClient::new(anon.clone())
        .list_agents(pb::Empty {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    assert!(
        err.message().contains("client certificate is required"),
        "{}",
        err.message()
    );
    let (_tx, rx) = tokio::sync::mpsc::channel::<pb::AgentMessage>(1);
    let err = AgentLinkClient::new(anon.clone())
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");

    // 2. Identity comes from the certificate: agent A's session is A's, whatever it says.
    let a = c.enroll("agent-a");
    let b = c.enroll("agent-b");
    let a_chan = certfleet_common::tls::mtls_channel(
        &c.addr,
        &ca,
        &read(&a.join("cert.pem")),
        &read(&a.join("key.pem")),
    )
    .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::AgentMessage>(4);
    tx.send(pb::AgentMessage {
        kind: Some(pb::agent_message::Kind::Hello(pb::Hello {
            hostname: "agent-b".into(),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut stream = AgentLinkClient::new(a_chan.clone())
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    match stream.message().await.unwrap().unwrap().kind {
        Some(pb::controller_message::Kind::Welcome(w)) => {
            assert_eq!(w.agent_id, agent_id(&a));
            assert_ne!(w.agent_id, agent_id(&b));
        }
        other => panic!("expected welcome, got {other:?}"),
    }
    drop(tx);

    // 3. An agent cannot call operator RPCs (its state dir looks like an identity dir): the CLI
    // says so before connecting, and the controller refuses the agent's certificate itself.
    let out = c.cli_as(&a, &["agents", "list"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("is not an operator's"),
        "{}",
        stderr(&out)
    );
    let agent_chan = certfleet_common::tls::mtls_channel(
        &c.addr,
        &ca,
        &read(&a.join("cert.pem")),
        &read(&a.join("key.pem")),
    )
    .unwrap();
    let err = OperatorClient::new(agent_chan)
        .list_agents(pb::Empty {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.message().contains("may not use the operator API"),
        "{}",
        err.message()
    );
    // ...and an operator cannot open an agent session.
    let admin_chan = certfleet_common::tls::mtls_channel(
        &c.addr,
        &ca,
        &read(&c.admin().join("cert.pem")),
        &read(&c.admin().join("key.pem")),
    )
    .unwrap();
    let (_tx2, rx2) = tokio::sync::mpsc::channel::<pb::AgentMessage>(1);
    let err = AgentLinkClient::new(admin_chan)
        .session(tokio_stream::wrappers::ReceiverStream::new(rx2))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.message().contains("is not an agent"),
        "{}",
        err.message()
    );

    // 4. A viewer reads but cannot mutate.
    let viewer = tmp.path().join("viewer");
    c.cli(&[
        "operators",
        "issue",
        "vera",
        "--role",
        "viewer",
        "--out",
        viewer.to_str().unwrap(),
    ]);
    assert!(c.cli_as(&viewer, &["agents", "list"]).status.success());
    let out = c.cli_as(&viewer, &["token", "create", "--ttl", "1h"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("has role viewer; this needs admin"),
        "{}",
        stderr(&out)
    );
    let out = c.cli_as(&viewer, &["agents", "revoke", "agent-a"]);
    assert!(stderr(&out).contains("needs admin"), "{}", stderr(&out));

    // 5. Tokens: reuse, expiry, another fleet (agent-side pin and server-side check).
    let token = c.token();
    let enroll = |token: &str, name: &str, ctl: &str| {
        std::process::Command::new(crate::support::bin("certfleet-agent"))
            .args([
                "enroll",
                "--controller",
                ctl,
                "--token",
                token,
                "--name",
                name,
                "--state-dir",
            ])
            .arg(tmp.path().join(format!("st-{name}")))
            .output()
            .unwrap()
    };
    assert!(enroll(&token, "t1", &c.addr).status.success());
    let out = enroll(&token, "t2", &c.addr);
    assert!(stderr(&out).contains("already used"), "{}", stderr(&out));
    assert!(
        !tmp.path().join("st-t2/key.pem").exists(),
        "a refused enrollment must not leave a key behind"
    );
    let short = c.cli(&["token", "create", "--ttl", "1s"]).trim().to_owned();
    std::thread::sleep(Duration::from_millis(1500));
    let out = enroll(&short, "t3", &c.addr);
    assert!(stderr(&out).contains("expired"), "{}", stderr(&out));
    let foreign = other.token();
    let out = enroll(&foreign, "t4", &c.addr);
    assert!(
        stderr(&out).contains("does not match the join token's pin"),
        "{}",
        stderr(&out)
    );
    // A client that skips the pin check still meets the controller's own check.
    let mut tampered = certfleet_common::token::JoinToken::parse(&c.token()).unwrap();
    tampered.ca_fingerprint = certfleet_common::token::JoinToken::parse(&foreign)
        .unwrap()
        .ca_fingerprint;
    let (_k, csr) = certfleet_common::pki::new_key_and_csr("t5").unwrap();
    let err = EnrollmentClient::new(anon.clone())
        .enroll(pb::EnrollRequest {
            token: tampered.to_text(),
            csr_pem: csr,
            name: "t5".into(),
            hostname: "h".into(),
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("another fleet"), "{}", err.message());
    let revoked = c.token();
    let rid = certfleet_common::token::JoinToken::parse(&revoked)
        .unwrap()
        .id();
    c.cli(&["token", "revoke", &rid]);
    let out = enroll(&revoked, "t7", &c.addr);
    assert!(stderr(&out).contains("was revoked"), "{}", stderr(&out));
    let out = enroll("cfj1.garbage", "t6", &c.addr);
    assert!(
        stderr(&out).contains("malformed join token"),
        "{}",
        stderr(&out)
    );

    // 6. Revoked operators are refused.
    c.cli(&["operators", "revoke", "vera"]);
    let out = c.cli_as(&viewer, &["agents", "list"]);
    assert!(
        stderr(&out).contains("operator vera has been revoked"),
        "{}",
        stderr(&out)
    );

    // 7. A certificate from a foreign CA is refused, with a hint.
    let out = c.cli_as(&other.admin(), &["agents", "list"]);
    assert!(!out.status.success());
    let msg = stderr(&out);
    assert!(
        msg.contains(&c.addr) && (msg.contains("another CA") || msg.contains("certificate")),
        "{msg}"
    );

    let metrics = c.metrics();
    for kind in [
        "token_reused",
        "token_expired",
        "wrong_fleet",
        "unauthenticated",
        "permission_denied",
        "revoked",
    ] {
        assert!(
            metrics.contains(&format!("certfleet_rpc_errors_total{{kind=\"{kind}\"}}")),
            "no {kind} in\n{metrics}"
        );
    }
}

#[test]
fn revocation_closes_a_live_stream_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Controller::start(tmp.path(), &[]);
    let s = c.enroll("doomed");
    let mut p = c.run_agent(&s, None, &[]);
    c.wait_connected(1);
    c.cli(&["agents", "revoke", "doomed"]);
    let code = p.wait(Duration::from_secs(10));
    assert_eq!(
        code,
        Some(77),
        "revoked agent should stop with EX_NOPERM:\n{}",
        p.log_text()
    );
    assert!(
        p.log_text().contains("has been revoked"),
        "{}",
        p.log_text()
    );
    let a = &c.agents()[0];
    assert_eq!(a["state"], "revoked");
    assert_eq!(a["connected"], false);
    // Coming back is refused too.
    let mut again = c.run_agent(&s, None, &[]);
    assert_eq!(
        again.wait(Duration::from_secs(10)),
        Some(77),
        "{}",
        again.log_text()
    );
    assert!(audit_actions(&c).iter().any(|(a, _)| a == "agent.revoke"));
}

#[test]
fn controller_killed_and_restarted_loses_nothing_and_agents_return() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Controller::start(tmp.path(), &[]);
    let states: Vec<_> = ["n1", "n2", "n3"].iter().map(|n| c.enroll(n)).collect();
    let _procs: Vec<_> = states.iter().map(|s| c.run_agent(s, None, &[])).collect();
    c.wait_connected(3);
    let spare = c.cli(&["token", "create", "--ttl", "1h", "--label", "site=dc2"]);
    let before_agents: Vec<String> = c
        .agents()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .collect();
    let before_audit = audit_actions(&c);

    c.proc.as_mut().unwrap().kill9();
    std::thread::sleep(Duration::from_secs(1));
    c.serve();
    c.wait_connected(3);

    let after_agents: Vec<String> = c
        .agents()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(before_agents, after_agents);
    let after_audit = audit_actions(&c);
    assert_eq!(&after_audit[..before_audit.len()], &before_audit[..]);
    let tokens = c.json(&["token", "list"]);
    let id = certfleet_common::token::JoinToken::parse(spare.trim())
        .unwrap()
        .id();
    assert!(
        tokens
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == id.as_str()
                && t["state"] == "active"
                && t["labels"]["site"] == "dc2")
    );
    // The spare token still works after the crash.
    let out = std::process::Command::new(crate::support::bin("certfleet-agent"))
        .args([
            "enroll",
            "--controller",
            &c.addr,
            "--token",
            spare.trim(),
            "--name",
            "n4",
            "--state-dir",
        ])
        .arg(tmp.path().join("n4"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn short_lived_agent_certificates_renew_without_dropping_the_session() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Controller::start(
        tmp.path(),
        &["--agent-cert-ttl", "20s", "--heartbeat-interval", "2s"],
    );
    let s = c.enroll("shortlived");
    let p = c.run_agent(&s, None, &[]);
    c.wait_connected(1);
    let first = read(&s.join("cert.pem"));
    // Three renewals at two thirds of a 20 s life take a little over 40 s.
    wait_for("three renewals", Duration::from_secs(75), || {
        let n = audit_actions(&c)
            .iter()
            .filter(|(a, _)| a == "agent.renew")
            .count();
        (n >= 3).then_some(())
    });
    let log = p.log_text();
    assert_eq!(
        log.matches("connected agent=").count(),
        1,
        "the session was dropped during renewals:\n{log}"
    );
    // The agent logs a renewal after the controller has audited it.
    wait_for(
        "three renewals in the agent's log",
        Duration::from_secs(20),
        || (p.log_text().matches("certificate renewed").count() >= 3).then_some(()),
    );
    assert_ne!(read(&s.join("cert.pem")), first);
    assert!(
        s.join("cert.pem.prev").exists(),
        "previous certificate is kept as a backup"
    );
    let a = &c.agents()[0];
    assert_eq!(a["connected"], true);
    let not_after =
        certfleet_common::model::parse_time(a["cert_not_after"].as_str().unwrap()).unwrap();
    assert!(not_after > certfleet_common::model::now(), "{a}");
    // Work still flows over the same stream: a rescan request is answered.
    let out = c.cli(&["inventory", "rescan", "shortlived"]);
    assert!(out.is_empty());
    wait_for("rescan answered", Duration::from_secs(15), || {
        p.log_text().contains("rescan requested").then_some(())
    });
    let metrics = c.metrics();
    assert!(
        metrics.contains("certfleet_agent_certificate_renewals_total"),
        "{metrics}"
    );
}

#[test]
fn agent_whose_certificate_expired_offline_comes_back_after_approval() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Controller::start(tmp.path(), &["--agent-cert-ttl", "4s"]);
    let s = c.enroll("sleeper");
    let id = agent_id(&s);
    std::thread::sleep(Duration::from_secs(6)); // host "off" past its certificate's expiry
    let p = c.run_agent(&s, None, &[]);
    wait_for("re-bind request", Duration::from_secs(20), || {
        (c.agents()[0]["state"] == "pending_approval").then_some(())
    });
    // The agent tells the operator what to do (logged once the controller has answered).
    wait_for(
        "the agent's hint to the operator",
        Duration::from_secs(20),
        || {
            p.log_text()
                .contains(&format!("certfleet agents approve {id}"))
                .then_some(())
        },
    );
    c.cli(&["agents", "approve", &id]);
    wait_for("agent back after approval", Duration::from_secs(20), || {
        p.log_text()
            .contains("certificate re-issued after expiry")
            .then_some(())
    });
    c.wait_connected(1);
    let actions = audit_actions(&c);
    assert!(actions.iter().any(|(a, _)| a == "agent.rebind_request"));
    assert!(actions.iter().any(|(a, _)| a == "agent.approve"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebind_refuses_a_different_key_and_a_foreign_certificate() {
    certfleet_common::tls::install_crypto_provider();
    let tmp = tempfile::tempdir().unwrap();
    let c = Controller::start(&tmp.path().join("a"), &[]);
    let other = Controller::start(&tmp.path().join("b"), &[]);
    let s = c.enroll("victim");
    let ca = read(&c.admin().join("ca.pem"));
    let anon = certfleet_common::tls::anonymous_channel(&c.addr, &ca).unwrap();
    let (_k, csr) = certfleet_common::pki::new_key_and_csr("thief").unwrap();
    let err = EnrollmentClient::new(anon.clone())
        .rebind(pb::RebindRequest {
            certificate_pem: read(&s.join("cert.pem")),
            csr_pem: csr.clone(),
        })
        .await
        .unwrap_err();
    assert!(
        err.message()
            .contains("not signed by the key this agent enrolled with"),
        "{}",
        err.message()
    );
    let foreign = other.enroll("foreigner");
    let err = EnrollmentClient::new(anon)
        .rebind(pb::RebindRequest {
            certificate_pem: read(&foreign.join("cert.pem")),
            csr_pem: csr,
        })
        .await
        .unwrap_err();
    assert!(
        err.message().contains("not issued by this fleet's CA"),
        "{}",
        err.message()
    );
}

//! Identities stay dead: every identity check is bound to the certificate, not the name. A
//! revoked or superseded certificate is refused for good, whatever is issued under the same
//! name afterwards (operators re-issued, agents renewed, re-bound or re-enrolled).

use std::path::Path;
use std::time::Duration;

use certfleet_common::proto as pb;
use certfleet_common::proto::agent_link_client::AgentLinkClient;
use certfleet_common::proto::enrollment_client::EnrollmentClient;

use crate::support::{Controller, wait_for};

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_revoked_operator_certificate_stays_refused_after_the_name_is_issued_again() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Controller::start(&tmp.path().join("ctl"), &[]);
    let first = tmp.path().join("vera-1");
    c.cli(&[
        "operators",
        "issue",
        "vera",
        "--role",
        "admin",
        "--out",
        first.to_str().unwrap(),
    ]);
    assert!(c.cli_as(&first, &["agents", "list"]).status.success());
    c.cli(&["operators", "revoke", "vera"]);
    let second = tmp.path().join("vera-2");
    c.cli(&[
        "operators",
        "issue",
        "vera",
        "--role",
        "admin",
        "--out",
        second.to_str().unwrap(),
    ]);
    assert!(
        c.cli_as(&second, &["agents", "list"]).status.success(),
        "the re-issued certificate works"
    );
    // The old certificate names the same operator, but it is not the one issued last.
    for args in [
        &["token", "create", "--ttl", "10m"][..],
        &["agents", "list"][..],
        &["operators", "list"][..],
    ] {
        let out = c.cli_as(&first, args);
        assert!(
            !out.status.success(),
            "the revoked certificate of vera was accepted for {args:?} after re-issue: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            stderr(&out).contains("has been revoked"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    // Revoked stays revoked: again after a second round and a controller restart.
    c.cli(&["operators", "revoke", "vera"]);
    let third = tmp.path().join("vera-3");
    c.cli(&[
        "operators",
        "issue",
        "vera",
        "--role",
        "viewer",
        "--out",
        third.to_str().unwrap(),
    ]);
    c.proc.as_mut().unwrap().kill9();
    c.serve();
    assert!(c.cli_as(&third, &["agents", "list"]).status.success());
    for old in [&first, &second] {
        let out = c.cli_as(old, &["agents", "list"]);
        assert!(
            !out.status.success() && stderr(&out).contains("has been revoked"),
            "{}: {}",
            old.display(),
            stderr(&out)
        );
    }
}

/// Opens an agent session with `cert_pem`/`key_pem`; the welcome, or the refusal.
async fn session(
    c: &Controller,
    ca: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<
    (
        tokio::sync::mpsc::Sender<pb::AgentMessage>,
        tonic::Streaming<pb::ControllerMessage>,
    ),
    tonic::Status,
> {
    let chan = certfleet_common::tls::mtls_channel(&c.addr, ca, cert_pem, key_pem).unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::AgentMessage>(4);
    tx.send(pb::AgentMessage {
        kind: Some(pb::agent_message::Kind::Hello(pb::Hello {
            hostname: "h".into(),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut stream = AgentLinkClient::new(chan)
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    match stream.message().await?.and_then(|m| m.kind) {
        Some(pb::controller_message::Kind::Welcome(_)) => Ok((tx, stream)),
        other => panic!("expected a welcome, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_certificate_is_refused_once_superseded_or_revoked() {
    certfleet_common::tls::install_crypto_provider();
    let tmp = tempfile::tempdir().unwrap();
    let c = Controller::start(&tmp.path().join("ctl"), &[]);
    let ca = read(&c.admin().join("ca.pem"));
    let s = c.enroll("a1");
    let key = read(&s.join("key.pem"));
    let old = read(&s.join("cert.pem"));

    // Renew over a session, as the agent does at two thirds of its certificate's life.
    let (tx, mut stream) = session(&c, &ca, &old, &key).await.unwrap();
    let csr = certfleet_common::pki::csr_for_key(&key, "a1").unwrap();
    tx.send(pb::AgentMessage {
        kind: Some(pb::agent_message::Kind::Renew(pb::RenewRequest {
            csr_pem: csr,
        })),
    })
    .await
    .unwrap();
    let renewed = loop {
        match stream.message().await.unwrap().and_then(|m| m.kind) {
            Some(pb::controller_message::Kind::Renewed(r)) => break r.certificate_pem,
            Some(_) => continue,
            None => panic!("stream ended before the renewal"),
        }
    };
    drop(tx);
    drop(stream);
    // Until the agent uses the new certificate, the old one still works (its answer may have
    // been lost); once it has, the old one is done for good.
    session(&c, &ca, &old, &key)
        .await
        .expect("the certificate in use when the renewal was issued");
    session(&c, &ca, &renewed, &key)
        .await
        .expect("the renewed certificate");
    let Err(err) = session(&c, &ca, &old, &key).await else {
        panic!("a superseded agent certificate was accepted");
    };
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("superseded"), "{}", err.message());
    // Nor can it ask for a new certificate by re-binding.
    let anon = certfleet_common::tls::anonymous_channel(&c.addr, &ca).unwrap();
    let err = EnrollmentClient::new(anon.clone())
        .rebind(pb::RebindRequest {
            certificate_pem: old.clone(),
            csr_pem: certfleet_common::pki::csr_for_key(&key, "a1").unwrap(),
        })
        .await
        .expect_err("a superseded certificate re-bound");
    assert!(err.message().contains("superseded"), "{}", err.message());

    // Revoked, then the name enrolled again: neither old certificate comes back.
    c.cli(&["agents", "revoke", "a1"]);
    let again = tmp.path().join("a1-again");
    let out = std::process::Command::new(crate::support::bin("certfleet-agent"))
        .args([
            "enroll",
            "--controller",
            &c.addr,
            "--token",
            &c.token(),
            "--name",
            "a1",
        ])
        .arg("--state-dir")
        .arg(&again)
        .output()
        .unwrap();
    assert!(out.status.success(), "re-enroll a1: {}", stderr(&out));
    let p = c.run_agent(&again, None, &[]);
    c.wait_connected(1);
    for (what, cert) in [("first", &old), ("renewed", &renewed)] {
        let err = session(&c, &ca, cert, &key)
            .await
            .err()
            .unwrap_or_else(|| panic!("the {what} certificate of a revoked agent was accepted"));
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
        assert!(err.message().contains("revoked"), "{}", err.message());
    }
    let err = EnrollmentClient::new(anon)
        .rebind(pb::RebindRequest {
            certificate_pem: renewed.clone(),
            csr_pem: certfleet_common::pki::csr_for_key(&key, "a1").unwrap(),
        })
        .await
        .expect_err("a revoked certificate re-bound");
    assert!(err.message().contains("revoked"), "{}", err.message());
    // The new enrollment is unaffected.
    wait_for("the new a1 connected", Duration::from_secs(20), || {
        p.log_text().contains("connected").then_some(())
    });
}

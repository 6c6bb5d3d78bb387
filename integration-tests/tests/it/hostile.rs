//! Hostile and broken peers against the real binaries on loopback: idle TLS connections that
//! never speak HTTP/2, peers that accept TCP and never speak TLS, agents that report more than
//! the controller accepts, and a simulator parent stopped with SIGTERM.

use std::io::Read;
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use certfleet_proto::v1 as pb;
use certfleet_proto::v1::agent_link_client::AgentLinkClient;

use crate::support::{Controller, Proc, bin, http_get, wait_for};

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A TLS client that completes the handshake (no client certificate, ALPN h2) and then never
/// sends a byte: the attack that exhausted the controller's file descriptors.
fn idle_tls(addr: &str, ca_pem: &str) -> Option<TcpStream> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let mut conn =
        rustls::ClientConnection::new(Arc::new(config), "127.0.0.1".try_into().unwrap()).unwrap();
    let mut tcp = TcpStream::connect(addr).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).ok()?;
    }
    Some(tcp)
}

/// True once the peer closed `s` (EOF or reset) within `within`.
fn closed_by_peer(s: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            // Session tickets and the like: keep reading.
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn idle_tls_connections_are_closed_and_do_not_lock_out_operators_or_agents() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Controller::start(
        tmp.path(),
        &[
            "--max-anonymous-connections",
            "40",
            "--max-anonymous-per-address",
            "30",
            "--handshake-timeout",
            "3s",
            "--first-request-timeout",
            "3s",
        ],
    );
    let state = c.enroll("steady");
    let mut agent = c.run_agent(&state, None, &[]);
    c.wait_connected(1);
    let ca = read(&c.dir.join("data/ca/ca.pem"));

    // 150 finished handshakes that never send the HTTP/2 preface, and 50 TCP connections that
    // never start TLS: far more than the anonymous pool holds.
    let mut idle: Vec<TcpStream> = Vec::new();
    for _ in 0..150 {
        if let Some(s) = idle_tls(&c.addr, &ca) {
            idle.push(s);
        }
    }
    let silent: Vec<TcpStream> = (0..50)
        .map(|_| TcpStream::connect(&c.addr).unwrap())
        .collect();
    assert!(
        idle.len() >= 100,
        "only {} idle TLS connections could be opened",
        idle.len()
    );

    // While they are open: operators, /healthz and a reconnecting agent still work.
    let out = c.cli_as(&c.admin(), &["agents", "list", "-o", "json"]);
    assert!(
        out.status.success(),
        "operator call during the flood: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(http_get(&c.http, "/healthz").is_some_and(|b| b.starts_with("ok")));
    agent.kill9();
    wait_for("the agent to be seen gone", Duration::from_secs(30), || {
        c.agents()
            .iter()
            .all(|a| a["connected"] == false)
            .then_some(())
    });
    let mut agent = c.run_agent(&state, None, &[]);
    c.wait_connected(1);

    // Every idle connection is closed by the controller (deadline or eviction).
    let mut still_open = 0;
    for s in idle.iter_mut() {
        if !closed_by_peer(s, Duration::from_secs(10)) {
            still_open += 1;
        }
    }
    assert_eq!(
        still_open, 0,
        "idle TLS connections the controller kept open"
    );
    for mut s in silent {
        assert!(
            closed_by_peer(&mut s, Duration::from_secs(10)),
            "a TCP connection that never started TLS was kept open"
        );
    }
    let m = c.metrics();
    assert!(
        m.lines()
            .any(|l| l.starts_with("certfleet_connections_evicted ") && !l.ends_with(" 0")),
        "{m}"
    );

    // A few idle connections, well within the pools: the first-request deadline closes them.
    let mut few: Vec<TcpStream> = (0..5).filter_map(|_| idle_tls(&c.addr, &ca)).collect();
    assert_eq!(few.len(), 5);
    for s in few.iter_mut() {
        assert!(
            closed_by_peer(s, Duration::from_secs(10)),
            "an idle TLS connection outlived the first-request deadline"
        );
    }
    let m = c.metrics();
    assert!(
        m.lines().any(
            |l| l.starts_with("certfleet_connections_first_request_timeouts ")
                && !l.ends_with(" 0")
        ),
        "{m}"
    );
    // The agent's session survived all of it.
    c.wait_connected(1);
    agent.kill9();
}

/// A listener that accepts TCP and never says anything.
fn silent_peer() -> (String, std::thread::JoinHandle<()>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let h = std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().take(8) {
            held.push(s);
        }
        std::thread::sleep(Duration::from_secs(60));
    });
    (addr, h)
}

#[test]
fn cli_and_agent_time_out_a_peer_that_never_speaks_tls() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Controller::start(tmp.path(), &[]);
    let token = c.token();
    let (addr, _h) = silent_peer();

    let run = |cmd: Command, name: &str| {
        let mut p = Proc::spawn(cmd, tmp.path().join(format!("{name}.log")));
        let started = Instant::now();
        let code = p.wait(Duration::from_secs(60));
        let text = p.log_text();
        assert!(
            code.is_some(),
            "{name} still waits after 60s on a peer that never speaks TLS:\n{text}"
        );
        assert_ne!(code, Some(0), "{text}");
        assert!(
            started.elapsed() < Duration::from_secs(45),
            "{name} took {:?}",
            started.elapsed()
        );
        assert!(text.contains(&addr), "{name} does not name {addr}:\n{text}");
        assert!(text.contains("TLS handshake"), "{name}:\n{text}");
        assert!(!text.contains("panicked"), "{text}");
    };

    let mut cli = Command::new(bin("certfleet"));
    cli.args(["--controller", &addr, "--identity"])
        .arg(c.admin())
        .args(["agents", "list"]);
    run(cli, "cli");

    let mut enroll = Command::new(bin("certfleet-agent"));
    enroll
        .args([
            "enroll",
            "--controller",
            &addr,
            "--token",
            &token,
            "--state-dir",
        ])
        .arg(tmp.path().join("agent-state"));
    run(enroll, "agent-enroll");
}

/// `n` self-signed certificates as PEM files in `dir`.
fn write_certs(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![format!("host{i}.example")])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(dir.join(format!("c{i}.pem")), cert.pem()).unwrap();
    }
}

#[test]
fn an_agent_over_the_report_limits_reports_a_problem_and_keeps_its_session() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Controller::start(tmp.path(), &["--max-certificates-per-agent", "3"]);
    let certs = tmp.path().join("certs");
    write_certs(&certs, 5);
    let config = tmp.path().join("agent.toml");
    std::fs::write(
        &config,
        format!("[[files]]\npaths = [\"{}/*.pem\"]\n", certs.display()),
    )
    .unwrap();
    let state = c.enroll("flooder");
    let mut agent = c.run_agent(&state, Some(&config), &[]);
    c.wait_connected(1);
    // The agent says why it did not send its inventory ...
    wait_for(
        "the agent's over-limit message",
        Duration::from_secs(30),
        || {
            agent
                .log_text()
                .contains("inventory not sent: over the controller's limits")
                .then_some(())
        },
    );
    assert!(
        agent
            .log_text()
            .contains("5 certificates, more than the limit of 3"),
        "{}",
        agent.log_text()
    );
    // ... the operator sees it as a problem and no certificate of it ...
    let table = wait_for(
        "the problem at the controller",
        Duration::from_secs(20),
        || {
            let t = c.cli(&["inventory", "--agent", "flooder"]);
            t.contains("inventory not sent").then_some(t)
        },
    );
    assert!(table.contains("0 certificates"), "{table}");
    // ... and it does not reconnect to try again.
    c.cli(&["inventory", "rescan"]);
    std::thread::sleep(Duration::from_secs(3));
    let log = agent.log_text();
    assert_eq!(
        log.lines().filter(|l| l.contains("reconnecting")).count(),
        0,
        "{log}"
    );
    agent.kill9();
}

#[test]
fn the_controller_refuses_over_limit_reports_whoever_sends_them() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Controller::start(
        tmp.path(),
        &[
            "--max-certificates-per-agent",
            "3",
            "--max-report-bytes",
            "65536",
        ],
    );
    let state = c.enroll("raw");
    let ca = read(&state.join("ca.pem"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let chan = certfleet_common::tls::mtls_channel(
            &c.addr,
            &ca,
            &read(&state.join("cert.pem")),
            &read(&state.join("key.pem")),
        )
        .unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::AgentMessage>(8);
        tx.send(pb::AgentMessage {
            kind: Some(pb::agent_message::Kind::Hello(pb::Hello {
                hostname: "raw".into(),
                ..Default::default()
            })),
        })
        .await
        .unwrap();
        let mut stream = AgentLinkClient::new(chan)
            .max_encoding_message_size(64 << 20)
            .session(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        match stream.message().await.unwrap().unwrap().kind {
            Some(pb::controller_message::Kind::Welcome(w)) => {
                assert_eq!(w.max_certificates, 3);
                assert_eq!(w.max_report_bytes, 65536);
            }
            other => panic!("expected welcome, got {other:?}"),
        }
        // Too many certificates: refused, recorded, and the session stays up.
        let cert = |i: usize| pb::CertificateRecord {
            fingerprint_sha256: format!("{i:064x}"),
            subject: format!("CN=c{i}"),
            ..Default::default()
        };
        tx.send(pb::AgentMessage {
            kind: Some(pb::agent_message::Kind::Inventory(pb::InventoryReport {
                full: true,
                certificates: (0..5).map(cert).collect(),
                ..Default::default()
            })),
        })
        .await
        .unwrap();
        let table = wait_for("the refusal recorded", Duration::from_secs(20), || {
            let t = c.cli(&["inventory", "--agent", "raw"]);
            t.contains("more than the limit of 3").then_some(t)
        });
        assert!(table.contains("0 certificates"), "{table}");
        c.wait_connected(1);
        // Over the byte limit: tonic refuses to decode it and the stream ends with the reason.
        tx.send(pb::AgentMessage {
            kind: Some(pb::agent_message::Kind::Inventory(pb::InventoryReport {
                full: true,
                problems: vec![pb::Problem {
                    subject: "x".repeat(100_000),
                    ..Default::default()
                }],
                ..Default::default()
            })),
        })
        .await
        .unwrap();
        let err = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match stream.message().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => panic!("stream ended without a reason"),
                    Err(s) => return s,
                }
            }
        })
        .await
        .expect("the over-size report ends the stream");
        assert!(
            err.message().contains("too large") || err.message().contains("limit"),
            "{err:?}"
        );
    });
    let log = c.proc.as_ref().unwrap().log_text();
    assert!(log.contains("inventory report refused"), "{log}");
}

#[test]
fn vcsa_services_stops_its_children_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("vc");
    let out = Command::new(bin("certfleet-sim"))
        .args(["build", "vcsa", "--root"])
        .arg(&root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let start = |log: &str| -> (Proc, Vec<u32>) {
        let mut cmd = Command::new(bin("certfleet-sim"));
        cmd.arg("--root").arg(&root).arg("vcsa-services");
        let p = Proc::spawn(cmd, tmp.path().join(log));
        let pids: Vec<u32> = wait_for("the services' pids", Duration::from_secs(30), || {
            let log = p.log_text();
            let line = log.lines().find(|l| l.contains("pids ["))?;
            let list = line.split("pids [").nth(1)?.trim_end_matches(']');
            Some(
                list.split(',')
                    .filter_map(|s| s.trim().parse().ok())
                    .collect(),
            )
        });
        assert_eq!(
            pids.len(),
            3,
            "slapd, postgres (the VCDB) and the HTTPS listener: {pids:?}"
        );
        for pid in &pids {
            assert!(alive(*pid), "child {pid} is not running");
        }
        (p, pids)
    };
    let gone = |pids: &[u32], how: &str| {
        for pid in pids {
            wait_for(
                &format!("child {pid} to be gone after {how}"),
                Duration::from_secs(10),
                || (!alive(*pid)).then_some(()),
            );
        }
    };
    let (mut p, pids) = start("services.log");
    let code = p.term();
    assert_eq!(code, Some(128 + 15), "{}", p.log_text());
    gone(&pids, "SIGTERM");
    // A test that drops its `Proc` (or panics) must not leave the children behind either.
    let (p, pids) = start("services-2.log");
    drop(p);
    gone(&pids, "the test dropped its process");
}

/// A process exists and is not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

//! `recover ovirt-hosted-engine` (issue 11, seed 003 "HostedEngine unavailable"): a simulated
//! 4.5 engine whose VM is down and two hosted-engine hosts whose VDSM certificates expired a
//! month ago, so their simulated libvirtd refuses to start. Only the real `certfleet-agent`
//! run by hand: `--csr-out` on the host brings the VM up, `sign` on the engine, `--cert-in`
//! on the host finishes.
//!
//! - kvm01, `--way dropin` on vdsm ≥ 4.40's socket activation: `libvirtd-tls.socket` is kept
//!   from starting by a drop-in while the VM starts (libvirtd gets no TLS socket), the clock is
//!   never touched; at the end the drop-ins are gone and libvirtd runs with its TLS socket and
//!   the new certificate.
//! - kvm03, `--way dropin` on the pre-4.40 layout: libvirtd runs without `--listen` from a
//!   drop-in, the same way round.
//! - kvm02, `--way clock`: a failure half-way (vdsmd broken) and a SIGKILL right after the
//!   clock was set both leave the simulated host clock restored and chronyd running (the kill
//!   is undone when the agent starts again); then the whole recovery succeeds.
//!
//! The host clock is the simulator's ([`certfleet_integration_tests::sim::clock`]), never the
//! machine's. Needs `cargo build --workspace --bins` and `openssl`.

use std::path::Path;
use std::process::{Command, Output};

use certfleet_integration_tests::sim::ovirt::{EngineSpec, NodeSpec, OvirtVersion, setup};
use certfleet_integration_tests::sim::ovirt::{build_engine, build_node};
use certfleet_integration_tests::sim::{Lifetime, SimHost, clock, systemd};

use crate::ovirt_rotation::{VDSM_CERT, fqdn, hash_tree, not_after, now, s, systemctl};
use crate::support;

const DROPIN: &str = "/run/systemd/system/libvirtd.service.d/50-certfleet-recover-no-tls.conf";
const SOCKET_DROPIN: &str =
    "/run/systemd/system/libvirtd-tls.socket.d/50-certfleet-recover-no-tls.conf";

fn agent(args: &[&str], root: &Path, state: &Path, cfg: &Path, crash: Option<&str>) -> Output {
    let mut cmd = Command::new(support::bin("certfleet-agent"));
    cmd.args(args)
        .arg("--root")
        .arg(root)
        .arg("--state-dir")
        .arg(state)
        .arg("--config")
        .arg(cfg)
        .env_remove("CERTFLEET_TEST_CRASH_AT");
    if let Some(c) = crash {
        cmd.env("CERTFLEET_TEST_CRASH_AT", c);
    }
    cmd.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "agent failed: {}", text(o));
    text(o)
}

fn failed(o: &Output) -> String {
    assert!(!o.status.success(), "agent should have failed: {}", text(o));
    text(o)
}

pub(crate) fn state(h: &SimHost, unit: &str) -> String {
    systemd::unit(h, unit).unwrap().state
}

fn loaded_exec(h: &SimHost, unit: &str) -> String {
    match systemd::unit(h, unit).unwrap().loaded_exec {
        Some(Ok(line)) => line,
        other => panic!("{unit}: {other:?}"),
    }
}

/// The engine signs the CSR as `certfleet-agent sign` on the engine VM does.
fn sign(engine: &SimHost, estate: &Path, cfg: &Path, csr: &Path, cer: &Path, host: &str) {
    ok(&agent(
        &[
            "sign",
            "--csr",
            &s(csr),
            "--out",
            &s(cer),
            "--san",
            &format!("DNS:{}", fqdn(host)),
        ],
        &engine.root,
        estate,
        cfg,
        None,
    ));
}

/// The simulated clock is back at the real time (within rounding) and chronyd runs.
fn clock_restored(h: &SimHost, state_dir: &Path) {
    assert!(
        clock::offset(h).abs() <= 2,
        "clock still off by {}s: {:?}",
        clock::offset(h),
        clock::history(h)
    );
    assert_eq!(state(h, "chronyd"), "active");
    assert!(!state_dir.join("recover-clock.json").exists());
}

#[test]
fn hosted_engine_host_recovered_by_dropin_and_by_clock_even_after_failure_and_kill() {
    let t0 = std::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sim = support::bin("certfleet-sim");
    let engine = SimHost::new(d.join("root-engine"), &sim).unwrap();
    let mut espec = EngineSpec::new(OvirtVersion::V4_5, &fqdn("engine"));
    // The engine CA predates the hosts (the clock way needs a time when both were valid).
    espec
        .lifetimes
        .insert("ca".into(), Lifetime::days(2000, 3000));
    let e = build_engine(&engine, &espec).unwrap();
    let mut hosts = Vec::new();
    for name in ["kvm01", "kvm02", "kvm03"] {
        let h = SimHost::new(d.join(format!("root-{name}")), &sim).unwrap();
        let mut spec = NodeSpec::new(&fqdn(name));
        spec.vdsm = Some(Lifetime::days(1900, -30));
        spec.libvirtd_listen = name == "kvm03";
        build_node(&h, &spec, &e).unwrap();
        setup::make_he_host(&h, &e).unwrap();
        clock::install(&h).unwrap();
        // The outage: the VM is down and libvirtd (so vdsmd) cannot start.
        setup::set_he_vm(&h, "down").unwrap();
        assert_eq!(systemctl(&h, &["restart", "libvirtd"]), 1);
        assert!(
            systemd::unit(&h, "libvirtd")
                .unwrap()
                .last_error
                .contains("expired")
        );
        assert_eq!(systemctl(&h, &["restart", "vdsmd"]), 1);
        hosts.push(h);
    }
    let cfg = d.join("agent.toml");
    std::fs::write(
        &cfg,
        "[settings]\n\"ovirt.p12_password\" = \"mypass\"\n\"ovirt.he_vm_poll\" = \"50ms\"\n\
         \"ovirt.he_vm_wait\" = \"20s\"\n",
    )
    .unwrap();
    let estate = d.join("state-engine");
    eprintln!("fleet built in {:.1}s", t0.elapsed().as_secs_f64());

    // --- kvm01 (socket activation) and kvm03 (--listen): the drop-in way (the default) ---
    for (h, name) in [(&hosts[0], "kvm01"), (&hosts[2], "kvm03")] {
        let socket = name == "kvm01";
        dropin_way(h, name, socket, d, &cfg, &engine, &estate);
    }
    eprintln!("drop-in way done at {:.1}s", t0.elapsed().as_secs_f64());

    // --- kvm02: the clock way ---
    let h = &hosts[1];
    let hstate = d.join("state-kvm02");
    let (csr, cer) = (d.join("kvm02.csr"), d.join("kvm02.cer"));
    let old_na = not_after(&h.path(VDSM_CERT));
    let clock_way = |extra: &[&str], crash: Option<&str>| {
        let mut a = vec!["recover", "ovirt-hosted-engine", "--way", "clock"];
        a.extend_from_slice(extra);
        agent(&a, &h.root, &hstate, &cfg, crash)
    };

    // 1. Fails half-way (vdsmd cannot start): the clock is restored, chronyd runs again.
    systemd::set_broken(h, "vdsmd", true).unwrap();
    let out = failed(&clock_way(&["--csr-out", &s(&csr)], None));
    assert!(
        out.contains("vdsmd") && out.contains("the clock was restored"),
        "{out}"
    );
    let hist = clock::history(h);
    assert_eq!(hist.len(), 2, "{hist:?}");
    assert!(
        hist[0].1 < old_na,
        "clock not set inside the validity: {hist:?}"
    );
    // libvirtd did start while the clock was back: the expired certificate was accepted.
    assert_eq!(state(h, "libvirtd"), "active");
    clock_restored(h, &hstate);
    assert!(!csr.exists());
    systemd::set_broken(h, "vdsmd", false).unwrap();

    // 2. Killed right after the clock was set: the clock stays back until the agent starts
    // again, which undoes it first (here `run`, which then fails: this agent is not enrolled).
    let killed = clock_way(
        &["--csr-out", &s(&csr)],
        Some("recover.hosted_engine:clock-set"),
    );
    assert!(!killed.status.success(), "{}", text(&killed));
    assert!(
        clock::offset(h) < -86_400 * 20,
        "clock not set back before the kill"
    );
    assert_eq!(state(h, "chronyd"), "inactive");
    assert!(hstate.join("recover-clock.json").exists());
    let started = agent(&["run"], &h.root, &hstate, &cfg, None);
    let started_text = text(&started);
    assert!(
        started_text.contains("undoing the clock change"),
        "{started_text}"
    );
    clock_restored(h, &hstate);

    // 3. The whole recovery: VM up, clock back, then the new certificate installed.
    setup::set_he_vm(h, "down").unwrap();
    let out = ok(&clock_way(&["--csr-out", &s(&csr)], None));
    assert!(
        out.contains("HostedEngine VM up") && out.contains("clock restored"),
        "{out}"
    );
    clock_restored(h, &hstate);
    assert_eq!(setup::he_vm(h), "up");
    sign(&engine, &estate, &cfg, &csr, &cer, "kvm02");
    let out = ok(&clock_way(&["--cert-in", &s(&cer)], None));
    assert!(out.contains("recovered:"), "{out}");
    assert!(not_after(&h.path(VDSM_CERT)) > now() + 1800 * 86_400);
    assert_eq!(state(h, "libvirtd"), "active");
    assert_eq!(state(h, "vdsmd"), "active");
    clock_restored(h, &hstate);
    let audit = std::fs::read_to_string(hstate.join("recover-audit.jsonl")).unwrap();
    for what in [
        "clock change journaled",
        "failed",
        "undo pending clock change",
        "clock restored",
        "recovered",
    ] {
        assert!(audit.contains(what), "audit lacks {what}: {audit}");
    }
}

/// The drop-in way on `h`: VM up with libvirtd's TLS listener off, CSR signed on the engine,
/// the certificate installed and the listener back. `socket`: vdsm ≥ 4.40's
/// `libvirtd-tls.socket` layout, else `--listen`.
fn dropin_way(
    h: &SimHost,
    name: &str,
    socket: bool,
    d: &Path,
    cfg: &Path,
    engine: &SimHost,
    estate: &Path,
) {
    let hstate = d.join(format!("state-{name}"));
    let (csr, cer) = (d.join(format!("{name}.csr")), d.join(format!("{name}.cer")));
    let old_na = not_after(&h.path(VDSM_CERT));
    let tree = hash_tree(&h.root);
    let dry = ok(&agent(
        &[
            "recover",
            "ovirt-hosted-engine",
            "--csr-out",
            &s(&csr),
            "--dry-run",
        ],
        &h.root,
        &hstate,
        cfg,
        None,
    ));
    assert!(
        dry.contains("plan (recover ovirt-hosted-engine --way dropin)"),
        "{dry}"
    );
    assert!(dry.contains(DROPIN) && dry.contains("dry run"), "{dry}");
    assert_eq!(dry.contains(SOCKET_DROPIN), socket, "{dry}");
    assert_eq!(hash_tree(&h.root), tree, "a dry run changed the host");
    assert!(!csr.exists());

    let out = ok(&agent(
        &["recover", "ovirt-hosted-engine", "--csr-out", &s(&csr)],
        &h.root,
        &hstate,
        cfg,
        None,
    ));
    assert!(out.contains("HostedEngine VM up (Up)"), "{out}");
    assert!(out.contains("wall time"), "{out}");
    assert!(h.path(DROPIN).exists());
    assert_eq!(
        loaded_exec(h, "libvirtd"),
        "/usr/sbin/libvirtd",
        "TLS listener still on"
    );
    if socket {
        assert!(h.path(SOCKET_DROPIN).exists());
        assert_eq!(
            state(h, "libvirtd-tls.socket"),
            "inactive",
            "TLS socket still on"
        );
    } else {
        assert!(
            !h.path(SOCKET_DROPIN).exists(),
            "socket drop-in on a --listen host"
        );
    }
    assert_eq!(state(h, "libvirtd"), "active");
    assert_eq!(state(h, "vdsmd"), "active");
    assert_eq!(setup::he_vm(h), "up");
    assert!(
        clock::history(h).is_empty(),
        "the drop-in way touched the clock"
    );
    assert!(csr.exists());
    // The VDSM certificate itself is still the expired one: only the listener is off.
    assert_eq!(not_after(&h.path(VDSM_CERT)), old_na);

    sign(engine, estate, cfg, &csr, &cer, name);
    let tree = hash_tree(&h.root);
    let dry = ok(&agent(
        &[
            "recover",
            "ovirt-hosted-engine",
            "--cert-in",
            &s(&cer),
            "--dry-run",
        ],
        &h.root,
        &hstate,
        cfg,
        None,
    ));
    assert!(dry.contains("dry run"), "{dry}");
    assert_eq!(hash_tree(&h.root), tree, "a dry run changed the host");
    let out = ok(&agent(
        &["recover", "ovirt-hosted-engine", "--cert-in", &s(&cer)],
        &h.root,
        &hstate,
        cfg,
        None,
    ));
    assert!(
        out.contains("recovered:") && out.contains("TLS listener again"),
        "{out}"
    );
    assert!(!h.path(DROPIN).exists(), "drop-in left behind");
    assert!(
        !h.path(SOCKET_DROPIN).exists(),
        "socket drop-in left behind"
    );
    if socket {
        assert_eq!(loaded_exec(h, "libvirtd"), "/usr/sbin/libvirtd");
        assert_eq!(
            state(h, "libvirtd-tls.socket"),
            "active",
            "TLS socket not back"
        );
    } else {
        assert_eq!(loaded_exec(h, "libvirtd"), "/usr/sbin/libvirtd --listen");
    }
    assert_eq!(state(h, "libvirtd"), "active");
    assert_eq!(state(h, "vdsmd"), "active");
    assert!(not_after(&h.path(VDSM_CERT)) > now() + 1800 * 86_400);
    // libvirtd restarts with its TLS listener on the new certificate, as after a reboot.
    assert_eq!(systemctl(h, &["restart", "libvirtd"]), 0);
    let audit = std::fs::read_to_string(hstate.join("recover-audit.jsonl")).unwrap();
    for what in [
        "drop-in written",
        "engine VM up",
        "drop-in removed",
        "recovered",
    ] {
        assert!(audit.contains(what), "audit lacks {what}: {audit}");
    }
    assert_eq!(audit.contains("TLS socket stopped"), socket, "{audit}");
}

/// `certfleet recover ovirt-hosted-engine --agent kvm01` through a controller: a hosted-engine
/// host whose VDSM certificate expired (libvirtd refuses it, the VM is down) and the engine,
/// both with agents enrolled; the engine's agent is down with its VM and, as a booting engine
/// VM does, starts again only once the simulated VM is up. An unknown agent exits 2 naming
/// kvm01; a dry run changes nothing; an engine agent that never comes makes the command abort
/// the plan naming it (exit 4) within `--engine-wait`; then the recovery: libvirtd active with
/// its TLS socket, the drop-ins gone, a new VDSM certificate, the steps in the audit log. Then
/// `--way clock` on a second host, kvm02, whose agent is killed right after it set the clock
/// back: started again it restores the clock first, the step is sent again, and the recovery
/// ends with the clock right, chronyd running and a new certificate.
#[test]
fn recover_hosted_engine_through_the_controller_waits_for_the_engine_agent() {
    use crate::support::{Controller, wait_for};
    use std::time::Duration;
    let t0 = std::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sim = support::bin("certfleet-sim");
    let engine = SimHost::new(d.join("root-engine"), &sim).unwrap();
    let mut espec = EngineSpec::new(OvirtVersion::V4_5, &fqdn("engine"));
    // The engine CA predates the hosts (the clock way needs a time when both were valid).
    espec
        .lifetimes
        .insert("ca".into(), Lifetime::days(2000, 3000));
    let e = build_engine(&engine, &espec).unwrap();
    let h = SimHost::new(d.join("root-kvm01"), &sim).unwrap();
    let mut spec = NodeSpec::new(&fqdn("kvm01"));
    spec.vdsm = Some(Lifetime::days(1800, -30));
    build_node(&h, &spec, &e).unwrap();
    setup::make_he_host(&h, &e).unwrap();
    // kvm02, a second hosted-engine host, for the clock way.
    let h2 = SimHost::new(d.join("root-kvm02"), &sim).unwrap();
    build_node(
        &h2,
        &NodeSpec {
            vdsm: Some(Lifetime::days(1800, -30)),
            ..NodeSpec::new(&fqdn("kvm02"))
        },
        &e,
    )
    .unwrap();
    setup::make_he_host(&h2, &e).unwrap();
    clock::install(&h2).unwrap();
    let cfg = d.join("agent.toml");
    std::fs::write(
        &cfg,
        "[settings]\n\"ovirt.p12_password\" = \"mypass\"\n\"ovirt.he_vm_poll\" = \"50ms\"\n\
         \"ovirt.he_vm_wait\" = \"20s\"\n",
    )
    .unwrap();
    let c = Controller::start(&d.join("ctl"), &[]);
    let run = |name: &str, root: &Path| {
        c.run_agent(
            &c.dir.join(format!("agent-{name}")),
            Some(&cfg),
            &["--root", &s(root)],
        )
    };
    c.enroll("engine");
    c.enroll("kvm01");
    c.enroll("kvm02");
    let mut engine_agent = run("engine", &engine.root);
    let mut host_agent = run("kvm01", &h.root);
    // kvm02's agent dies right after it set the host clock back (clock way, below).
    let mut kvm02_agent = c.run_agent_env(
        &c.dir.join("agent-kvm02"),
        Some(&cfg),
        &["--root", &s(&h2.root)],
        &[("CERTFLEET_TEST_CRASH_AT", "recover.hosted_engine:clock-set")],
    );
    // Before the outage the engine's agent reported the engine PKI (which is how the recipe
    // finds who signs for kvm01 while that agent is down).
    wait_for(
        "kvm01's VDSM certificate and the engine's certificates",
        Duration::from_secs(60),
        || {
            let inv = c.json(&["inventory"]).to_string();
            (inv.contains("ovirt.node.vdsm") && inv.contains("ovirt.engine.apache")).then_some(())
        },
    );
    // The outage: the VM (with the engine's agent) down, libvirtd cannot start.
    engine_agent.term();
    setup::set_he_vm(&h, "down").unwrap();
    assert_eq!(systemctl(&h, &["restart", "libvirtd"]), 1);
    wait_for(
        "the engine agent disconnected",
        Duration::from_secs(20),
        || {
            c.agents()
                .iter()
                .any(|a| a["name"] == "engine" && a["connected"] == false)
                .then_some(())
        },
    );
    eprintln!("fleet built in {:.1}s", t0.elapsed().as_secs_f64());
    let cli = |args: &[&str]| {
        let mut a = vec!["recover", "ovirt-hosted-engine"];
        a.extend_from_slice(args);
        let mut cmd = Command::new(support::bin("certfleet"));
        cmd.args(["--controller", &c.addr, "--identity"])
            .arg(c.admin())
            .args(&a)
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd
    };

    // Usage: an agent that is not a hosted-engine host.
    let o = cli(&["--agent", "nope"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("\"nope\"") && text(&o).contains("kvm01"),
        "{}",
        text(&o)
    );
    let o = cli(&["--agent", "engine"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));

    // Dry run: the plan printed, nothing changed.
    let tree = hash_tree(&h.root);
    let o = cli(&["--agent", "kvm01", "--dry-run"]).output().unwrap();
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    for want in [
        "ovirt.hosted_engine_start",
        "ovirt.enroll_request",
        "ovirt.hosted_engine_finish",
        "(dry run)",
        "wall time",
    ] {
        assert!(out.contains(want), "{want} missing: {out}");
    }
    assert_eq!(hash_tree(&h.root), tree, "a dry run changed the host");
    assert_eq!(setup::he_vm(&h), "down");

    // The engine's agent never comes: the plan is aborted, naming it, after --engine-wait.
    let o = cli(&["--agent", "kvm01", "--engine-wait", "5s"])
        .output()
        .unwrap();
    let out = text(&o);
    assert_eq!(o.status.code(), Some(4), "{out}");
    assert!(
        out.contains("engine VM's agent engine did not connect within 5s"),
        "{out}"
    );
    assert_eq!(
        setup::he_vm(&h),
        "up",
        "the first half did not bring the VM up"
    );
    assert!(h.path(SOCKET_DROPIN).exists());
    eprintln!(
        "engine-wait abort done at {:.1}s",
        t0.elapsed().as_secs_f64()
    );

    // The recovery: the engine's agent starts when the simulated VM comes up again; kvm01's
    // agent dies once after the second half acted and before it answered, and the step
    // resumes when the agent is back (the controller sends it again).
    setup::set_he_vm(&h, "down").unwrap();
    host_agent.term();
    let crash = "ovirt.hosted_engine_finish:before-result";
    host_agent = c.run_agent_env(
        &c.dir.join("agent-kvm01"),
        Some(&cfg),
        &["--root", &s(&h.root)],
        &[("CERTFLEET_TEST_CRASH_AT", crash)],
    );
    let old_na = not_after(&h.path(VDSM_CERT));
    let child = cli(&["--agent", "kvm01", "--engine-wait", "60s"])
        .spawn()
        .unwrap();
    wait_for("the HostedEngine VM up", Duration::from_secs(60), || {
        (setup::he_vm(&h) == "up").then_some(())
    });
    let _engine_agent = run("engine", &engine.root);
    wait_for(
        "kvm01's agent killed at the crash point",
        Duration::from_secs(60),
        || host_agent.child.try_wait().unwrap().map(|_| ()),
    );
    assert!(
        host_agent
            .log_text()
            .contains("CERTFLEET_TEST_CRASH_AT reached"),
        "{}",
        host_agent.log_text()
    );
    let host_agent = run("kvm01", &h.root);
    let o = child.wait_with_output().unwrap();
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("succeeded") && out.contains("wall time"),
        "{out}"
    );
    assert!(!h.path(DROPIN).exists(), "drop-in left behind");
    assert!(
        !h.path(SOCKET_DROPIN).exists(),
        "socket drop-in left behind"
    );
    assert_eq!(
        state(&h, "libvirtd-tls.socket"),
        "active",
        "TLS socket not back"
    );
    assert_eq!(state(&h, "libvirtd"), "active");
    assert_eq!(state(&h, "vdsmd"), "active");
    let na = not_after(&h.path(VDSM_CERT));
    assert!(
        na > now() + 365 * 86_400 && na > old_na,
        "VDSM certificate not renewed"
    );
    assert!(
        host_agent
            .log_text()
            .contains("resuming an interrupted step"),
        "{}",
        host_agent.log_text()
    );
    // libvirtd restarts with its TLS socket on the new certificate, as after a reboot.
    assert_eq!(systemctl(&h, &["restart", "libvirtd"]), 0);
    let audit = c.json(&["audit"]).to_string();
    for want in [
        "plan.dry_run",
        "ovirt.hosted_engine_start",
        "ovirt.enroll_request",
        "ovirt.hosted_engine_finish",
        "plan.succeeded",
    ] {
        assert!(audit.contains(want), "audit lacks {want}: {audit}");
    }

    // The clock way through the controller, killed at its worst moment: kvm02's agent dies
    // right after it set the clock back (chronyd stopped). Started again as a supervisor
    // would, it restores the clock before anything else; the controller sends the step again,
    // the clock goes back inside the certificate's validity once more, the VM comes up, the
    // clock is restored, and the engine signs. At the end the clock is right and chronyd runs.
    setup::set_he_vm(&h2, "down").unwrap();
    assert_eq!(systemctl(&h2, &["restart", "libvirtd"]), 1);
    let old_na = not_after(&h2.path(VDSM_CERT));
    let child = cli(&["--agent", "kvm02", "--way", "clock", "--engine-wait", "60s"])
        .spawn()
        .unwrap();
    wait_for(
        "kvm02's agent killed with the clock set back",
        Duration::from_secs(60),
        || kvm02_agent.child.try_wait().unwrap().map(|_| ()),
    );
    assert!(
        clock::offset(&h2) < -86_400 * 20,
        "clock not set back before the kill: {:?}",
        clock::history(&h2)
    );
    assert_ne!(state(&h2, "chronyd"), "active");
    kvm02_agent = run("kvm02", &h2.root);
    let o = child.wait_with_output().unwrap();
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        kvm02_agent.log_text().contains("undoing the clock change"),
        "{}",
        kvm02_agent.log_text()
    );
    clock_restored(&h2, &c.dir.join("agent-kvm02"));
    assert_eq!(state(&h2, "libvirtd"), "active");
    assert_eq!(state(&h2, "vdsmd"), "active");
    let na = not_after(&h2.path(VDSM_CERT));
    assert!(
        na > now() + 365 * 86_400 && na > old_na,
        "kvm02's VDSM certificate not renewed"
    );
    // Restarted with the real clock, libvirtd takes the new certificate.
    assert_eq!(systemctl(&h2, &["restart", "libvirtd"]), 0);
    drop(kvm02_agent);
    eprintln!("done at {:.1}s", t0.elapsed().as_secs_f64());
}

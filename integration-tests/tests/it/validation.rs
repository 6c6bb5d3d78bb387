//! Every duration and count a user can give (controller and CLI flags, the agent's flag and
//! config keys) with zero, negative, huge and malformed values, through the real binaries: no
//! panic, and either a refusal at parse time (exit 2, naming the limits) or a clear message.

use std::process::{Command, Output};

use crate::support::bin;

const DURATION_VALUES: &[&str] = &[
    "0",
    "0s",
    "-1",
    "-5s",
    "18446744073709551615s",
    "100000000d",
    "99999999999999999999999",
    "abc",
    "",
    "1x",
];

const COUNT_VALUES: &[&str] = &[
    "0",
    "-1",
    "4294967296",
    "18446744073709551616",
    "1.5",
    "abc",
    "",
];

#[derive(Clone, Copy)]
enum Kind {
    Duration,
    /// A count; `true` when zero is a meaningful value.
    Count(bool),
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn check(what: &str, kind: Kind, value: &str, out: &Output) {
    let t = text(out);
    assert!(!t.contains("panicked"), "{what} {value:?} panicked:\n{t}");
    let code = out.status.code();
    let zero_ok = matches!(kind, Kind::Count(true)) && value == "0";
    if zero_ok {
        assert_eq!(
            code,
            Some(1),
            "{what} {value:?} (valid) should get past parsing:\n{t}"
        );
        return;
    }
    assert_eq!(
        code,
        Some(2),
        "{what} {value:?} was not refused at parse time:\n{t}"
    );
    assert!(t.contains("invalid value"), "{what} {value:?}:\n{t}");
    assert!(
        t.contains("between"),
        "{what} {value:?}: the message does not name the limits:\n{t}"
    );
}

#[test]
fn every_controller_and_cli_flag_is_bounded_at_parse_time() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing");
    let missing = missing.to_str().unwrap();
    // (subcommand, flag, kind). Valid values reach a missing data directory or identity and
    // stop there with exit 1.
    let serve = |flag: &'static str, kind| (vec!["serve", "--data-dir", missing], flag, kind);
    let op = |args: &[&'static str], flag: &'static str, kind| {
        let mut a = vec!["--controller", "127.0.0.1:1", "--identity", missing];
        a.extend_from_slice(args);
        (a, flag, kind)
    };
    let cases: Vec<(Vec<&str>, &str, Kind)> = vec![
        serve("--agent-cert-ttl", Kind::Duration),
        serve("--heartbeat-interval", Kind::Duration),
        serve("--handshake-timeout", Kind::Duration),
        serve("--first-request-timeout", Kind::Duration),
        serve("--store-probe-interval", Kind::Duration),
        serve("--store-failure-grace", Kind::Duration),
        serve("--max-connections", Kind::Count(false)),
        serve("--max-anonymous-connections", Kind::Count(false)),
        serve("--max-anonymous-per-address", Kind::Count(false)),
        serve("--max-report-bytes", Kind::Count(false)),
        serve("--max-certificates-per-agent", Kind::Count(false)),
        serve("--max-locations-per-certificate", Kind::Count(false)),
        op(&["token", "create"], "--ttl", Kind::Duration),
        op(&["audit"], "--limit", Kind::Count(true)),
        op(&["inventory"], "--expiring-within", Kind::Duration),
        op(
            &["plan", "create", "files"],
            "--expiring-within",
            Kind::Duration,
        ),
        op(
            &["plan", "create", "files"],
            "--max-parallel",
            Kind::Count(false),
        ),
        op(
            &["plan", "create", "files"],
            "--canary-soak",
            Kind::Duration,
        ),
        op(
            &["plan", "create", "files"],
            "--failure-budget",
            Kind::Count(true),
        ),
        op(
            &["plan", "create", "files"],
            "--window-length",
            Kind::Duration,
        ),
        op(
            &["policy", "set", "file.custom"],
            "--renew-within",
            Kind::Duration,
        ),
        op(
            &["policy", "set", "file.custom", "--renew-within", "30d"],
            "--window-length",
            Kind::Duration,
        ),
        op(
            &["policy", "set", "file.custom", "--renew-within", "30d"],
            "--max-parallel",
            Kind::Count(false),
        ),
    ];
    for (args, flag, kind) in cases {
        let values = match kind {
            Kind::Duration => DURATION_VALUES,
            Kind::Count(_) => COUNT_VALUES,
        };
        for v in values {
            let out = Command::new(bin("certfleet"))
                .args(&args)
                .arg(format!("{flag}={v}"))
                .output()
                .unwrap();
            check(
                &format!("certfleet {} {flag}", args.join(" ")),
                kind,
                v,
                &out,
            );
        }
    }
}

#[test]
fn the_agent_flag_and_config_values_are_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    for v in DURATION_VALUES {
        let out = Command::new(bin("certfleet-agent"))
            .args(["run", "--state-dir"])
            .arg(tmp.path().join("missing"))
            .arg(format!("--max-backoff={v}"))
            .output()
            .unwrap();
        check("certfleet-agent run --max-backoff", Kind::Duration, v, &out);
    }

    let root = tmp.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let scan = |body: &str| {
        let cfg = tmp.path().join("agent.toml");
        std::fs::write(
            &cfg,
            format!(
                "root = \"{}\"\nplatforms = [\"files\"]\n{body}\n",
                root.display()
            ),
        )
        .unwrap();
        Command::new(bin("certfleet-agent"))
            .args(["scan", "--config"])
            .arg(&cfg)
            .output()
            .unwrap()
    };
    let renew = |days: &str, mode: &str| {
        format!(
            "[[renew]]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\nissuer = \"ca\"\ndays = {days}\nmode = \"{mode}\"\n"
        )
    };
    let ca = |days: &str| {
        format!("[[cas]]\nname = \"ca\"\ndir = \"/ca\"\ncommand = [\"openssl\"]\ndays = {days}\n")
    };
    for key in ["scan_interval", "tool_timeout"] {
        for v in DURATION_VALUES {
            let out = scan(&format!("{key} = \"{v}\""));
            let t = text(&out);
            assert!(!t.contains("panicked"), "{key} = {v:?}:\n{t}");
            assert_eq!(out.status.code(), Some(1), "{key} = {v:?} accepted:\n{t}");
            assert!(t.contains(key) || t.contains(v), "{key} = {v:?}: {t}");
        }
    }
    // Counts: zero, negative, huge, malformed.
    let bad: Vec<(String, &str)> = vec![
        (renew("-1", "0644"), "days"),
        (renew("99999999999", "0644"), "days"),
        (renew("4000", "0644"), "days"),
        (renew("\"x\"", "0644"), "days"),
        (renew("0", "999"), "mode"),
        (renew("0", "rw-r--r--"), "mode"),
        (ca("0"), "days"),
        (ca("-1"), "days"),
        (ca("4000"), "days"),
        (ca("1e9"), "days"),
    ];
    for (body, key) in &bad {
        let out = scan(body);
        let t = text(&out);
        assert!(!t.contains("panicked"), "{body}:\n{t}");
        assert_eq!(out.status.code(), Some(1), "accepted:\n{body}\n{t}");
        assert!(t.contains(key), "{body}: {t}");
    }
    // The bounds let ordinary values through.
    let out = scan(&format!(
        "scan_interval = \"1h\"\ntool_timeout = \"30s\"\n{}{}",
        renew("0", "0644"),
        ca("398")
    ));
    assert!(out.status.success(), "{}", text(&out));
}

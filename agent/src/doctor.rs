//! `certfleet-agent doctor`: what this host needs for certfleet to work on it, each finding
//! with its fix.
//!
//! Read-only: it runs no tool and changes no file. It checks the config file (the same checks
//! as `check-config`), the tools each platform's collector and recipes call (found and
//! executable, at the path the agent would use: `[tools]` or the usual path under the root),
//! the state directory and key permissions (0700 / 0600, owned by the agent's account), the
//! agent's own certificate (expired, or past the point where the agent renews it), and, when
//! enrolled, the controller: a TLS handshake with the agent's identity and one call the
//! controller answers without doing anything (a method it does not have, answered
//! `Unimplemented`), whose HTTP `date` header gives the clock skew.
//!
//! The list of tools per platform below mirrors the `cfg.tool(name, default)` calls of
//! `collect/` and `act/`; a tool added there must be added here too.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use certfleet_common::model::format_time;
use serde::Serialize;

use crate::config::{AgentConfig, HostFacts};
use crate::state::StateDir;

/// Exit code when a finding needs attention (warn or fail), as `certfleet status --check`.
pub const ATTENTION_EXIT: u8 = 7;

/// Clock skew against the controller above which certificates issued by one side look
/// not-yet-valid to the other (warn), and above which renewals and plans go wrong (fail).
const SKEW_WARN_SECS: i64 = 5;
const SKEW_FAIL_SECS: i64 = 60;

/// How serious a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Fine.
    Ok,
    /// Worth knowing, nothing to do (an optional tool absent).
    Note,
    /// Works today, needs attention.
    Warn,
    /// Broken.
    Fail,
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Level::Ok => "ok",
            Level::Note => "note",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        })
    }
}

/// One thing checked.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    /// The area: `config`, `tool`, `state`, `certificate`, `controller`, `clock`.
    pub check: &'static str,
    /// How serious.
    pub level: Level,
    /// What was found, naming the path, tool or address.
    pub detail: String,
    /// What to do about it (empty when nothing).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub fix: String,
}

impl Finding {
    fn new(check: &'static str, level: Level, detail: String, fix: impl Into<String>) -> Self {
        Finding {
            check,
            level,
            detail,
            fix: fix.into(),
        }
    }
}

/// Whether any finding needs attention.
pub fn needs_attention(findings: &[Finding]) -> bool {
    findings.iter().any(|f| f.level >= Level::Warn)
}

/// A tool a platform's collector or recipes run.
struct Tool {
    name: &'static str,
    default: &'static str,
    /// What uses it.
    used_by: &'static str,
    /// Without it the platform cannot be collected or renewed (else: some recipes only).
    required: bool,
}

const fn tool(name: &'static str, default: &'static str, used_by: &'static str) -> Tool {
    Tool {
        name,
        default,
        used_by,
        required: true,
    }
}

const fn optional(name: &'static str, default: &'static str, used_by: &'static str) -> Tool {
    Tool {
        name,
        default,
        used_by,
        required: false,
    }
}

/// The tools of each platform, from the `cfg.tool(…)` calls of its collector and recipes.
fn tools_of(platform: &str) -> Vec<Tool> {
    match platform {
        "vsphere" => vec![
            tool(
                "vecs-cli",
                "/usr/lib/vmware-vmafd/bin/vecs-cli",
                "collector, recipe vsphere.*",
            ),
            tool(
                "vmafd-cli",
                "/usr/lib/vmware-vmafd/bin/vmafd-cli",
                "collector, recipe vsphere.*",
            ),
            tool(
                "dir-cli",
                "/usr/lib/vmware-vmafd/bin/dir-cli",
                "recipe vsphere.* (trusted roots)",
            ),
            tool(
                "certool",
                "/usr/lib/vmware-vmca/bin/certool",
                "recipe vsphere.* (VMCA signing)",
            ),
            tool(
                "lwregshell",
                "/opt/likewise/bin/lwregshell",
                "collector, recipe vsphere.machine_ssl",
            ),
            tool(
                "service-control",
                "/bin/service-control",
                "recipe vsphere.* (restarts)",
            ),
            tool(
                "vmon-cli",
                "/usr/lib/vmware-vmon/vmon-cli",
                "recipe vsphere.* (restarts)",
            ),
            optional(
                "vdcrepadmin",
                "/usr/lib/vmware-vmdir/bin/vdcrepadmin",
                "collector (replication health)",
            ),
            optional(
                "psql",
                "/opt/vmware/vpostgres/current/bin/psql",
                "recipe vsphere.* (extension certificates)",
            ),
            tool("openssl", "/usr/bin/openssl", "recipe vsphere.*"),
        ],
        "ovirt_engine" => vec![
            tool("openssl", "/usr/bin/openssl", "recipe ovirt.* (signing)"),
            tool(
                "engine-config",
                "/usr/bin/engine-config",
                "recipe ovirt.* (validity settings)",
            ),
            optional(
                "engine-setup",
                "/usr/bin/engine-setup",
                "recipe ovirt.engine (engine-setup renewal)",
            ),
            tool(
                "ssh-keygen",
                "/usr/bin/ssh-keygen",
                "recipe ovirt.vmconsole_*",
            ),
            tool("systemctl", "/usr/bin/systemctl", "restarts"),
        ],
        "ovirt_node" => vec![
            tool("openssl", "/usr/bin/openssl", "recipe ovirt.host"),
            tool(
                "systemctl",
                "/usr/bin/systemctl",
                "recipe ovirt.host (restarts)",
            ),
            optional(
                "hosted-engine",
                "/usr/sbin/hosted-engine",
                "recipe ovirt.hosted_engine (self-hosted engine hosts only)",
            ),
        ],
        "gke_admin" => vec![
            tool("gkectl", "/usr/bin/gkectl", "collector, recipe gke.*"),
            tool("kubectl", "/usr/bin/kubectl", "recipe gke.*"),
            tool("openssl", "/usr/bin/openssl", "recipe gke.*"),
        ],
        "kubeadm" => vec![
            tool("kubeadm", "/usr/bin/kubeadm", "collector, recipe kubeadm.*"),
            tool(
                "kubectl",
                "/usr/bin/kubectl",
                "recipe kubeadm.* (verification)",
            ),
            tool(
                "crictl",
                "/usr/bin/crictl",
                "recipe kubeadm.* (static pod restarts)",
            ),
            tool("openssl", "/usr/bin/openssl", "recipe kubeadm.*"),
        ],
        _ => Vec::new(),
    }
}

/// What the `files` recipe needs: openssl for the CSR, systemctl for the units to restart.
fn tools_of_renew(cfg: &AgentConfig) -> Vec<Tool> {
    let mut t = Vec::new();
    if !cfg.renew.is_empty() {
        t.push(tool("openssl", "/usr/bin/openssl", "recipe files (CSR)"));
        if cfg.renew.iter().any(|r| !r.restart.is_empty()) {
            t.push(tool(
                "systemctl",
                "/usr/bin/systemctl",
                "recipe files (restart)",
            ));
        }
    }
    t
}

/// Whether `path` is a regular file someone may execute (what `Command::new` will need).
fn executable(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Err(e) => Err(format!("not found ({e})")),
        Ok(m) if !m.is_file() => Err("not a regular file".into()),
        Ok(m) if m.permissions().mode() & 0o111 == 0 => Err(format!(
            "not executable (mode {:o})",
            m.permissions().mode() & 0o7777
        )),
        Ok(_) => Ok(()),
    }
}

/// The tools of the platforms this host runs.
pub fn check_tools(cfg: &AgentConfig, platforms: &[String]) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut seen: Vec<(&str, PathBuf)> = Vec::new();
    let all = platforms
        .iter()
        .flat_map(|p| tools_of(p).into_iter().map(move |t| (p.as_str(), t)))
        .chain(tools_of_renew(cfg).into_iter().map(|t| ("files", t)));
    for (platform, t) in all {
        let path = cfg.tool(t.name, t.default);
        if seen.iter().any(|(n, p)| *n == t.name && *p == path) {
            continue;
        }
        seen.push((t.name, path.clone()));
        let shown = cfg.shown(&path);
        match executable(&path) {
            Ok(()) => out.push(Finding::new(
                "tool",
                Level::Ok,
                format!("{} at {shown} ({platform}: {})", t.name, t.used_by),
                "",
            )),
            Err(why) => out.push(Finding::new(
                "tool",
                if t.required { Level::Fail } else { Level::Note },
                format!("{} at {shown}: {why} ({platform}: {})", t.name, t.used_by),
                format!(
                    "install it, or set its path in the agent config: [tools] {:?} = \"/path/to/{}\"",
                    t.name, t.name
                ),
            )),
        }
    }
    out
}

/// The state directory (0700) and the key (0600), both owned by the account running this.
pub fn check_state(state: &StateDir, uid: u32) -> Vec<Finding> {
    let dir = state.path();
    let mut out = Vec::new();
    let m = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) => {
            out.push(Finding::new(
                "state",
                Level::Warn,
                format!("state directory {}: {e}", dir.display()),
                "enroll this host: certfleet-agent enroll --controller HOST:PORT --token TOKEN",
            ));
            return out;
        }
    };
    let mut perms = |path: &Path, m: &std::fs::Metadata, chmod: &str| {
        let mode = m.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            out.push(Finding::new(
                "state",
                Level::Fail,
                format!(
                    "{} is mode {mode:o}: others can read the agent's identity",
                    path.display()
                ),
                format!("chmod {chmod} {}", path.display()),
            ));
        } else if m.uid() != uid {
            out.push(Finding::new(
                "state",
                Level::Fail,
                format!(
                    "{} is owned by uid {}, not by this account (uid {uid})",
                    path.display(),
                    m.uid()
                ),
                format!(
                    "chown {uid} {} (the agent must own its identity)",
                    path.display()
                ),
            ));
        } else {
            out.push(Finding::new(
                "state",
                Level::Ok,
                format!("{} mode {mode:o}, owner uid {uid}", path.display()),
                "",
            ));
        }
    };
    perms(dir, &m, "700");
    let key = state.key_path();
    match std::fs::metadata(&key) {
        Ok(km) => perms(&key, &km, "600"),
        Err(_) if !state.is_enrolled() => out.push(Finding::new(
            "state",
            Level::Warn,
            format!("{} holds no identity: not enrolled", dir.display()),
            "certfleet-agent enroll --controller HOST:PORT --token TOKEN",
        )),
        Err(e) => out.push(Finding::new(
            "state",
            Level::Fail,
            format!("{}: {e}", key.display()),
            "re-enroll this host (certfleet token create; certfleet-agent enroll)",
        )),
    }
    out
}

/// The agent's own certificate at time `at`: expired, past its renewal point (two thirds of
/// its lifetime, when a connected agent renews it), or fine.
pub fn check_certificate(not_before: i64, not_after: i64, cert: &Path, at: i64) -> Finding {
    let renew_at = not_before + (not_after - not_before) * 2 / 3;
    if not_after <= at {
        Finding::new(
            "certificate",
            Level::Fail,
            format!("{} expired on {}", cert.display(), format_time(not_after)),
            "start the agent: it asks the controller to re-bind its key (an operator approves with `certfleet agents approve`)",
        )
    } else if not_before > at {
        Finding::new(
            "certificate",
            Level::Fail,
            format!(
                "{} is valid only from {}, but this host's clock says {}",
                cert.display(),
                format_time(not_before),
                format_time(at)
            ),
            "this host's clock is behind: fix NTP (timedatectl, chronyc tracking)",
        )
    } else if renew_at <= at {
        Finding::new(
            "certificate",
            Level::Warn,
            format!(
                "{} expires on {} and should have been renewed from {}",
                cert.display(),
                format_time(not_after),
                format_time(renew_at)
            ),
            "the agent renews it while connected: check that `certfleet-agent run` is running and reaches the controller (its log says why not)",
        )
    } else {
        Finding::new(
            "certificate",
            Level::Ok,
            format!(
                "{} valid until {} (renewed from {})",
                cert.display(),
                format_time(not_after),
                format_time(renew_at)
            ),
            "",
        )
    }
}

/// The config file, with `check-config`'s checks; no file: the defaults, said as a note.
pub fn check_config(
    config: Option<&Path>,
    root: Option<&Path>,
    host: &dyn HostFacts,
) -> Vec<Finding> {
    let Some(path) = config else {
        return vec![Finding::new(
            "config",
            Level::Note,
            "no --config: built-in defaults, platforms detected".into(),
            "",
        )];
    };
    let problems = AgentConfig::check_file(path, root, host);
    if problems.is_empty() {
        return vec![Finding::new(
            "config",
            Level::Ok,
            format!("{}: OK", path.display()),
            "",
        )];
    }
    problems
        .into_iter()
        .map(|p| {
            Finding::new(
                "config",
                Level::Fail,
                format!("{}: {p}", path.display()),
                format!(
                    "edit {} (certfleet-agent check-config lists every problem)",
                    path.display()
                ),
            )
        })
        .collect()
}

/// The clock skew finding for this host's time `here` against the controller's `there`.
pub fn check_skew(addr: &str, here: i64, there: i64) -> Finding {
    let skew = here - there;
    let detail = format!(
        "this host's clock is {}s {} the controller's ({addr} says {})",
        skew.abs(),
        if skew >= 0 { "ahead of" } else { "behind" },
        format_time(there)
    );
    let level = match skew.abs() {
        s if s > SKEW_FAIL_SECS => Level::Fail,
        s if s > SKEW_WARN_SECS => Level::Warn,
        _ => Level::Ok,
    };
    let fix = if level == Level::Ok {
        ""
    } else {
        "synchronise both clocks with NTP (timedatectl, chronyc tracking): certificates one side issues look not-yet-valid or expired to the other"
    };
    Finding::new("clock", level, detail, fix)
}

/// The controller as this agent reaches it: TLS with its identity, one call, the clock.
pub async fn check_controller(
    addr: &str,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Vec<Finding> {
    use certfleet_common::proto as pb;
    let channel = match certfleet_common::tls::mtls_channel(addr, ca_pem, cert_pem, key_pem) {
        Ok(c) => c,
        Err(e) => {
            return vec![Finding::new(
                "controller",
                Level::Fail,
                format!("controller {addr}: {e}"),
                "fix the controller address in agent.json (re-enroll if it moved)",
            )];
        }
    };
    // A method the controller does not have: answered `Unimplemented` by its router without
    // reaching any service (no audit, no error counter), once TLS with our certificate is
    // through. The answer's HTTP `date` header is the controller's clock.
    let mut grpc = tonic::client::Grpc::new(channel);
    let call = async {
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("transport error: {e}")))?;
        let path =
            tonic::codegen::http::uri::PathAndQuery::from_static("/certfleet.v1.AgentLink/Doctor");
        let codec = tonic_prost::ProstCodec::<pb::Empty, pb::Empty>::default();
        grpc.unary(tonic::Request::new(pb::Empty {}), path, codec)
            .await
            .map(|r| r.metadata().clone())
    };
    let answer = tokio::time::timeout(std::time::Duration::from_secs(20), call).await;
    let here = certfleet_common::model::now();
    let metadata = match answer {
        Err(_) => {
            return vec![Finding::new(
                "controller",
                Level::Fail,
                format!("controller {addr} did not answer within 20s"),
                "check the network path to the controller (firewall, proxy) and that it runs",
            )];
        }
        Ok(Ok(m)) => m,
        Ok(Err(s)) if s.code() == tonic::Code::Unimplemented => s.metadata().clone(),
        Ok(Err(s)) if s.message() == "operation was canceled" => {
            return vec![Finding::new(
                "controller",
                Level::Fail,
                format!(
                    "the controller at {addr} closed the connection before answering: it most likely refused this agent's certificate"
                ),
                "see the controller's log for \"TLS handshake refused\"; a revoked or other fleet's agent is re-enrolled with a new token",
            )];
        }
        Ok(Err(s)) => {
            return vec![Finding::new(
                "controller",
                Level::Fail,
                certfleet_common::tls::explain_status(addr, &s),
                "check the controller address in agent.json, that the controller runs, and the network path",
            )];
        }
    };
    let mut out = vec![Finding::new(
        "controller",
        Level::Ok,
        format!("{addr}: TLS with this agent's certificate accepted"),
        "",
    )];
    let date = metadata
        .get("date")
        .and_then(|v| v.to_str().ok())
        .and_then(httpdate_to_unix);
    out.push(match date {
        Some(there) => check_skew(addr, here, there),
        None => Finding::new(
            "clock",
            Level::Note,
            format!("{addr} sent no date: clock skew not measured"),
            "",
        ),
    });
    out
}

/// An HTTP date (`Tue, 01 Dec 2026 00:03:26 GMT`, RFC 9110 IMF-fixdate) as Unix seconds.
pub fn httpdate_to_unix(s: &str) -> Option<i64> {
    let fmt = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    time::PrimitiveDateTime::parse(s.trim(), fmt)
        .ok()
        .map(|t| t.assume_utc().unix_timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Facts;

    impl HostFacts for Facts {
        fn user_exists(&self, name: &str) -> bool {
            name == "root"
        }
        fn group_exists(&self, name: &str) -> bool {
            name == "root"
        }
        fn unit_exists(&self, _: &Path, name: &str) -> Result<bool, String> {
            Ok(name == "nginx.service")
        }
    }

    fn cfg_at(root: &Path, extra: &str) -> AgentConfig {
        toml::from_str(&format!("root = {:?}\n{extra}", root.display().to_string())).unwrap()
    }

    fn exe(path: &Path, mode: u32) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn tools_found_missing_not_executable_and_optional() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        exe(&root.join("usr/bin/gkectl"), 0o755);
        exe(&root.join("usr/bin/kubectl"), 0o644);
        let elsewhere = root.join("opt/openssl");
        exe(&elsewhere, 0o755);
        let cfg = cfg_at(
            root,
            &format!("[tools]\nopenssl = {:?}\n", elsewhere.display().to_string()),
        );
        let f = check_tools(&cfg, &["gke_admin".into()]);
        let by = |name: &str| {
            f.iter()
                .find(|x| x.detail.starts_with(&format!("{name} at")))
                .unwrap_or_else(|| panic!("{name}: {f:#?}"))
        };
        assert_eq!(by("gkectl").level, Level::Ok);
        assert!(by("gkectl").detail.contains("/usr/bin/gkectl"), "{f:#?}");
        assert_eq!(by("kubectl").level, Level::Fail);
        assert!(by("kubectl").detail.contains("not executable (mode 644)"));
        assert!(by("kubectl").fix.contains("[tools]"));
        assert_eq!(by("openssl").level, Level::Ok);
        // ovirt_node: hosted-engine is optional (a note), systemctl required (a failure).
        let f = check_tools(&cfg, &["ovirt_node".into()]);
        let he = f
            .iter()
            .find(|x| x.detail.starts_with("hosted-engine"))
            .unwrap();
        assert_eq!(he.level, Level::Note, "{he:?}");
        let sc = f
            .iter()
            .find(|x| x.detail.starts_with("systemctl"))
            .unwrap();
        assert_eq!(sc.level, Level::Fail, "{sc:?}");
        assert!(needs_attention(&f));
    }

    #[test]
    fn state_permissions_and_ownership() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        let state = StateDir(dir.clone());
        let uid = nix::unistd::geteuid().as_raw();
        // Not there: not enrolled.
        let f = check_state(&state, uid);
        assert_eq!(f[0].level, Level::Warn, "{f:?}");
        assert!(f[0].fix.contains("enroll"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(dir.join("key.pem"), "k").unwrap();
        std::fs::set_permissions(dir.join("key.pem"), std::fs::Permissions::from_mode(0o640))
            .unwrap();
        let f = check_state(&state, uid);
        assert!(f.iter().all(|x| x.level == Level::Fail), "{f:#?}");
        assert!(f[0].fix.starts_with("chmod 700"), "{f:#?}");
        assert!(f[1].fix.starts_with("chmod 600"), "{f:#?}");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(dir.join("key.pem"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        assert!(!needs_attention(&check_state(&state, uid)));
        // Owned by someone else.
        let f = check_state(&state, uid + 1);
        assert!(f[0].detail.contains("owned by uid"), "{f:#?}");
        assert!(f[0].fix.starts_with("chown"), "{f:#?}");
    }

    #[test]
    fn certificate_expired_overdue_and_fine() {
        let p = Path::new("/var/lib/certfleet-agent/cert.pem");
        let (nb, na) = (1_000_000, 1_000_000 + 90 * 86_400);
        assert_eq!(check_certificate(nb, na, p, nb + 86_400).level, Level::Ok);
        let overdue = check_certificate(nb, na, p, nb + 80 * 86_400);
        assert_eq!(overdue.level, Level::Warn);
        assert!(overdue.fix.contains("certfleet-agent run"), "{overdue:?}");
        let expired = check_certificate(nb, na, p, na + 1);
        assert_eq!(expired.level, Level::Fail);
        assert!(
            expired.detail.contains("cert.pem expired on"),
            "{expired:?}"
        );
        assert_eq!(check_certificate(nb, na, p, nb - 600).level, Level::Fail);
    }

    #[test]
    fn config_problems_are_findings_with_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("agent.toml");
        std::fs::write(
            &p,
            "platforms = [\"vsphere\", \"nope\"]\n[[renew]]\ncert = \"/a\"\nkey = \"/b\"\nissuer = \"ca\"\nrestart = [\"ghost.service\"]\n",
        )
        .unwrap();
        let f = check_config(Some(&p), Some(tmp.path()), &Facts);
        assert!(f.len() >= 2, "{f:#?}");
        assert!(
            f.iter()
                .all(|x| x.level == Level::Fail && x.detail.starts_with(&p.display().to_string()))
        );
        assert!(f.iter().any(|x| x.detail.contains("nope")), "{f:#?}");
        assert!(
            f.iter().any(|x| x.detail.contains("ghost.service")),
            "{f:#?}"
        );
        assert_eq!(check_config(None, None, &Facts)[0].level, Level::Note);
    }

    #[test]
    fn clock_skew_and_http_dates() {
        assert_eq!(
            httpdate_to_unix("Tue, 01 Dec 2026 00:03:26 GMT"),
            Some(1_796_083_406)
        );
        assert_eq!(httpdate_to_unix("yesterday"), None);
        assert_eq!(check_skew("c:1", 100, 99).level, Level::Ok);
        let w = check_skew("c:1", 100, 130);
        assert_eq!(w.level, Level::Warn);
        assert!(w.detail.contains("30s behind"), "{w:?}");
        assert_eq!(check_skew("c:1", 1000, 100).level, Level::Fail);
    }
}

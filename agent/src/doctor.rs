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
//! Then, per recipe this host takes part in (by its platforms), whether it can run here: the
//! tools, files and settings its steps on this host use, one finding per recipe naming what is
//! missing.
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
            tool(
                "ldapsearch",
                "/usr/bin/ldapsearch",
                "recipe vsphere.machine_ssl, vsphere.sts (vmdir)",
            ),
            tool(
                "ldapmodify",
                "/usr/bin/ldapmodify",
                "recipe vsphere.machine_ssl, vsphere.sts (vmdir)",
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
        let path = tool_path(cfg, t.name, t.default);
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

/// Something a recipe needs on this host besides its tools.
enum Need {
    /// A file the recipe reads: from a setting (`None`: a fixed path) with its default
    /// (`None`: the setting must be set).
    File {
        setting: Option<&'static str>,
        default: Option<&'static str>,
        what: &'static str,
        /// A password file, and what the agent does when group or others can read it.
        secret: Secret,
    },
    /// A setting that must be set (no default).
    Setting {
        key: &'static str,
        what: &'static str,
    },
    /// A directory the recipe writes in.
    Dir {
        setting: Option<&'static str>,
        default: &'static str,
        what: &'static str,
    },
}

/// A password file's exposure: whether the agent refuses one that group or others can read.
#[derive(Clone, Copy, PartialEq)]
enum Secret {
    /// Not a secret.
    No,
    /// A secret the agent reads anyway (a warning: anyone on the host can read it).
    Exposed,
    /// A secret the agent refuses to read unless it is 0600-like (a failure).
    Refused,
}

/// What one recipe needs on a host of one platform: the part this host plays in it (the
/// agent actions the recipe's steps call on it), the tools those actions run and the files and
/// settings they read. From the recipes' `steps` and the actions' module docs in `act/`.
struct RecipeNeeds {
    recipe: &'static str,
    platform: &'static str,
    part: &'static str,
    /// Tools its steps run here (names of [`tools_of`]); it fails without them.
    tools: &'static [&'static str],
    /// Tools some of its steps use when present (it runs without them, doing less).
    optional: &'static [&'static str],
    needs: &'static [Need],
}

const SSO_PASSWORD: Need = Need::File {
    setting: Some("vsphere.sso_password_file"),
    default: None,
    what: "SSO administrator password (replication gate, vmdir writes)",
    secret: Secret::Exposed,
};
const VMCA_ROOT: Need = Need::File {
    setting: None,
    default: Some("/var/lib/vmware/vmca/root.cer"),
    what: "VMCA root certificate (chain of the new certificates)",
    secret: Secret::No,
};
const ENGINE_CA_KEY: Need = Need::File {
    setting: None,
    default: Some("/etc/pki/ovirt-engine/private/ca.pem"),
    what: "engine CA key (openssl ca signs with it)",
    secret: Secret::No,
};
const VDSM_PKI: Need = Need::Dir {
    setting: Some("ovirt.vdsm_pki"),
    default: "/etc/pki/vdsm",
    what: "VDSM PKI directory (certificates installed there)",
};
const GKE_ADMIN_KUBECONFIG: Need = Need::File {
    setting: Some("gke.admin_kubeconfig"),
    default: Some("/home/ubuntu/kubeconfig"),
    what: "admin cluster kubeconfig",
    secret: Secret::No,
};

/// Every recipe and what it needs on each platform it touches.
const RECIPES: &[RecipeNeeds] = &[
    RecipeNeeds {
        recipe: "vsphere-machine-ssl",
        platform: "vsphere",
        part: "new Machine SSL from VMCA into VECS, Lookup Service and extensions re-trusted, services restarted",
        tools: &[
            "vdcrepadmin",
            "certool",
            "vecs-cli",
            "lwregshell",
            "ldapsearch",
            "ldapmodify",
            "service-control",
            "vmon-cli",
            "openssl",
        ],
        optional: &["psql"],
        needs: &[SSO_PASSWORD, VMCA_ROOT],
    },
    RecipeNeeds {
        recipe: "vsphere-solution-users",
        platform: "vsphere",
        part: "solution users re-issued by VMCA into vmdir and VECS, extension thumbprints updated",
        tools: &[
            "vdcrepadmin",
            "dir-cli",
            "certool",
            "vecs-cli",
            "service-control",
            "vmon-cli",
            "openssl",
        ],
        optional: &["psql"],
        needs: &[SSO_PASSWORD, VMCA_ROOT],
    },
    RecipeNeeds {
        recipe: "vsphere-sts",
        platform: "vsphere",
        part: "new STS signing certificate written to vmdir with ldapmodify",
        tools: &[
            "vdcrepadmin",
            "certool",
            "ldapsearch",
            "ldapmodify",
            "service-control",
        ],
        optional: &[],
        needs: &[SSO_PASSWORD, VMCA_ROOT],
    },
    RecipeNeeds {
        recipe: "vsphere-vmca-root",
        platform: "vsphere",
        part: "new VMCA root (certool --genselfcacert, --rootca) published to TRUSTED_ROOTS; STS, Machine SSL and solution users must follow",
        tools: &["vdcrepadmin", "vmafd-cli", "certool", "vecs-cli", "openssl"],
        optional: &[],
        needs: &[
            SSO_PASSWORD,
            VMCA_ROOT,
            Need::File {
                setting: None,
                default: Some("/var/lib/vmware/vmca/privatekey.pem"),
                what: "VMCA's private key (backed up before the new root replaces it)",
                secret: Secret::No,
            },
        ],
    },
    RecipeNeeds {
        recipe: "pins-retrust",
        platform: "vsphere",
        part: "Lookup Service trust and vpx_ext thumbprints made to match VECS, no certificate changed",
        tools: &[
            "vmafd-cli",
            "vecs-cli",
            "lwregshell",
            "ldapsearch",
            "ldapmodify",
        ],
        optional: &["psql"],
        needs: &[],
    },
    RecipeNeeds {
        recipe: "esxi-hosts",
        platform: "vsphere",
        part: "ESXi host certificates renewed through vCenter's SOAP API",
        tools: &[],
        optional: &[],
        needs: &[
            Need::File {
                setting: Some("esxi.vim_password_file"),
                default: None,
                what: "vCenter SSO user's password",
                secret: Secret::Exposed,
            },
            Need::Setting {
                key: "esxi.vim_url",
                what: "vCenter SDK URL",
            },
            Need::Setting {
                key: "esxi.vim_user",
                what: "vCenter SSO user",
            },
        ],
    },
    RecipeNeeds {
        recipe: "ovirt-engine",
        platform: "ovirt_engine",
        part: "engine certificates re-signed by the engine CA, ovirt-engine restarted",
        tools: &["openssl", "engine-config", "systemctl"],
        optional: &["engine-setup"],
        needs: &[ENGINE_CA_KEY],
    },
    RecipeNeeds {
        recipe: "ovirt-hosts",
        platform: "ovirt_engine",
        part: "hosts put in maintenance and re-enrolled through the engine API",
        tools: &[],
        optional: &[],
        needs: &[
            Need::File {
                setting: Some("ovirt.api_password_file"),
                default: None,
                what: "engine API password",
                secret: Secret::Refused,
            },
            Need::Setting {
                key: "ovirt.api_url",
                what: "engine API URL",
            },
        ],
    },
    RecipeNeeds {
        recipe: "ovirt-hosts",
        platform: "ovirt_node",
        part: "host files backed up and verified after the engine re-enrolled it",
        tools: &["openssl"],
        optional: &[],
        needs: &[VDSM_PKI],
    },
    RecipeNeeds {
        recipe: "ovirt-hosts-offline",
        platform: "ovirt_engine",
        part: "host CSRs signed with openssl ca, vmconsole keys signed with ssh-keygen",
        tools: &["openssl", "ssh-keygen"],
        optional: &[],
        needs: &[ENGINE_CA_KEY],
    },
    RecipeNeeds {
        recipe: "ovirt-hosts-offline",
        platform: "ovirt_node",
        part: "CSR made here, signed certificate installed, libvirtd and vdsmd restarted",
        tools: &["openssl", "systemctl"],
        optional: &["hosted-engine"],
        needs: &[VDSM_PKI],
    },
    RecipeNeeds {
        recipe: "ovirt-hosted-engine",
        platform: "ovirt_engine",
        part: "the hosted-engine host's CSR signed with openssl ca once the engine VM is up",
        tools: &["openssl"],
        optional: &[],
        needs: &[ENGINE_CA_KEY],
    },
    RecipeNeeds {
        recipe: "ovirt-hosted-engine",
        platform: "ovirt_node",
        part: "self-hosted engine hosts only: engine VM up without libvirtd's TLS listener (or with the clock set back), CSR made here, signed certificate installed",
        tools: &["openssl", "systemctl"],
        optional: &["hosted-engine"],
        needs: &[VDSM_PKI],
    },
    RecipeNeeds {
        recipe: "gke-user-ca",
        platform: "gke_admin",
        part: "gkectl update credentials certificate-authorities (user clusters), kubeconfigs renewed",
        tools: &["gkectl", "kubectl", "openssl"],
        optional: &[],
        needs: &[GKE_ADMIN_KUBECONFIG],
    },
    RecipeNeeds {
        recipe: "gke-admin-ca",
        platform: "gke_admin",
        part: "gkectl update credentials certificate-authorities (admin cluster)",
        tools: &["gkectl", "kubectl", "openssl"],
        optional: &[],
        needs: &[GKE_ADMIN_KUBECONFIG],
    },
    RecipeNeeds {
        recipe: "gke-kubeconfig",
        platform: "gke_admin",
        part: "user-cluster kubeconfigs fetched anew from the admin cluster",
        tools: &["kubectl", "openssl"],
        optional: &[],
        needs: &[GKE_ADMIN_KUBECONFIG],
    },
    RecipeNeeds {
        recipe: "kubeadm-certs",
        platform: "kubeadm",
        part: "kubeadm certs renew, static pods restarted",
        tools: &["kubeadm", "kubectl", "crictl", "openssl"],
        optional: &[],
        needs: &[Need::Dir {
            setting: Some("kubeadm.cert_dir"),
            default: "/etc/kubernetes/pki",
            what: "kubeadm PKI directory",
        }],
    },
];

/// Where the agent would run `name` (the LDAP tools are looked up in two places).
fn tool_path(cfg: &AgentConfig, name: &str, default: &str) -> PathBuf {
    match name {
        "ldapsearch" | "ldapmodify" => crate::collect::vsphere::ldap_tool(cfg, name),
        _ => cfg.tool(name, default),
    }
}

/// Why a needed file, directory or setting is not usable (with its fix, and whether it keeps
/// the recipe from running), or `None` when it is.
fn need_problem(cfg: &AgentConfig, need: &Need) -> Option<(String, String, bool)> {
    let blocking = |(why, fix): (String, String)| Some((why, fix, true));
    match need {
        Need::Setting { key, what } => match cfg.setting(key) {
            Some(_) => None,
            None => blocking((
                format!("{what}: setting {key} is not set"),
                format!("set {key} under [settings]"),
            )),
        },
        Need::File {
            setting,
            default,
            what,
            secret,
        } => {
            let (shown, path) = match setting.and_then(|s| cfg.setting(s)).or(*default) {
                Some(p) => (p.to_owned(), cfg.host_path(p)),
                None => {
                    let key = setting.unwrap_or("?");
                    return blocking((
                        format!("{what}: setting {key} is not set"),
                        format!("set {key} = \"/path/to/file\" (mode 0600) under [settings]"),
                    ));
                }
            };
            match std::fs::metadata(&path) {
                Err(e) => blocking((
                    format!("{what} {shown}: {e}"),
                    match setting {
                        Some(key) => format!("create it, or point {key} at it"),
                        None => "this host is not what the recipe expects".into(),
                    },
                )),
                Ok(m) if !m.is_file() => {
                    blocking((format!("{what} {shown}: not a regular file"), String::new()))
                }
                Ok(m) if *secret != Secret::No && m.permissions().mode() & 0o077 != 0 => Some((
                    format!(
                        "{what} {shown}: mode {:o}, {}",
                        m.permissions().mode() & 0o777,
                        if *secret == Secret::Refused {
                            "the agent refuses a password file others can read"
                        } else {
                            "anyone on this host can read the password"
                        }
                    ),
                    format!("chmod 600 {shown}"),
                    *secret == Secret::Refused,
                )),
                Ok(_) => None,
            }
        }
        Need::Dir {
            setting,
            default,
            what,
        } => {
            let shown = setting.and_then(|s| cfg.setting(s)).unwrap_or(default);
            match std::fs::metadata(cfg.host_path(shown)) {
                Ok(m) if m.is_dir() => None,
                Ok(_) => blocking((format!("{what} {shown}: not a directory"), String::new())),
                Err(e) => blocking((
                    format!("{what} {shown}: {e}"),
                    match setting {
                        Some(key) => format!("point {key} at it"),
                        None => String::new(),
                    },
                )),
            }
        }
    }
}

/// One finding per recipe this host takes part in (by its platforms, and `files` for
/// `[[renew]]`/`[[cas]]`): ready, or what keeps it from running here. Its optional tools
/// missing only narrow it (a note in the tool findings).
pub fn check_recipes(cfg: &AgentConfig, platforms: &[String]) -> Vec<Finding> {
    let mut out = Vec::new();
    for r in RECIPES
        .iter()
        .filter(|r| platforms.iter().any(|p| p == r.platform))
    {
        let known = tools_of(r.platform);
        let default_of = |name: &str| {
            known
                .iter()
                .find(|t| t.name == name)
                .map(|t| t.default)
                .unwrap_or_default()
        };
        let mut b = Blockers::default();
        for name in r.tools {
            b.tool(cfg, name, default_of(name));
        }
        for n in r.needs {
            if let Some((why, fix, blocks)) = need_problem(cfg, n) {
                if blocks {
                    b.missing.push(why);
                } else {
                    b.risks.push(why);
                }
                if !fix.is_empty() {
                    b.fixes.push(fix);
                }
            }
        }
        for name in r.optional {
            if executable(&tool_path(cfg, name, default_of(name))).is_err() {
                b.absent_optional.push(name);
            }
        }
        out.push(b.finding(r.recipe, r.platform, r.part));
    }
    if !cfg.renew.is_empty() || !cfg.cas.is_empty() {
        out.push(files_recipe(cfg));
    }
    out
}

/// What keeps one recipe from running here, gathered into its finding.
#[derive(Default)]
struct Blockers {
    /// Without these it fails.
    missing: Vec<String>,
    /// It runs, but these need attention (a password file others can read).
    risks: Vec<String>,
    /// Optional tools absent: it does less.
    absent_optional: Vec<&'static str>,
    fixes: Vec<String>,
}

impl Blockers {
    /// Records `name` as missing unless it is executable where the agent would run it.
    fn tool(&mut self, cfg: &AgentConfig, name: &str, default: &str) {
        let path = tool_path(cfg, name, default);
        if let Err(why) = executable(&path) {
            self.missing
                .push(format!("{name} at {}: {why}", cfg.shown(&path)));
            self.fixes
                .push(format!("install {name} or set [tools] {name:?}"));
        }
    }

    /// Fail when something is missing (risks added), else warn on risks, else a note on
    /// absent optional tools, else ready.
    fn finding(self, recipe: &str, platform: &str, part: &str) -> Finding {
        let head = format!("{recipe} ({platform}: {part})");
        let fix = self.fixes.join("; ");
        if !self.missing.is_empty() {
            let mut detail = format!("{head} cannot run here: {}", self.missing.join("; "));
            if !self.risks.is_empty() {
                detail = format!("{detail}; also {}", self.risks.join("; "));
            }
            return Finding::new("recipe", Level::Fail, detail, fix);
        }
        if !self.risks.is_empty() {
            let detail = format!("{head}: ready, but {}", self.risks.join("; "));
            return Finding::new("recipe", Level::Warn, detail, fix);
        }
        if !self.absent_optional.is_empty() {
            let detail = format!(
                "{head}: ready (without {}: the steps that use it are skipped or do less)",
                self.absent_optional.join(", ")
            );
            return Finding::new("recipe", Level::Note, detail, fix);
        }
        Finding::new("recipe", Level::Ok, format!("{head}: ready"), fix)
    }
}

/// The `files` recipe: on a host with `[[renew]]`, a CSR made next to each certificate and the
/// signed one installed (the tools of [`tools_of_renew`], the directories); on a CA host
/// (`[[cas]]`), the sign command and the CA directory.
fn files_recipe(cfg: &AgentConfig) -> Finding {
    let mut b = Blockers::default();
    for t in tools_of_renew(cfg) {
        b.tool(cfg, t.name, t.default);
    }
    for (i, r) in cfg.renew.iter().enumerate() {
        for (what, file) in [("cert", &r.cert), ("key", &r.key)] {
            let dir = Path::new(file).parent().unwrap_or(Path::new("/"));
            if !cfg.host_path(dir).is_dir() {
                b.missing.push(format!(
                    "renew[{i}].{what} {file}: directory {} does not exist",
                    dir.display()
                ));
            }
        }
    }
    for (i, c) in cfg.cas.iter().enumerate() {
        if !cfg.host_path(&c.dir).is_dir() {
            b.missing.push(format!(
                "cas[{i}] ({}): directory {} does not exist",
                c.name, c.dir
            ));
        }
        if let Some(program) = c.command.first() {
            let path = if program == "openssl" {
                cfg.tool("openssl", "/usr/bin/openssl")
            } else if Path::new(program).is_absolute() {
                cfg.host_path(program)
            } else {
                PathBuf::from(program)
            };
            if path.is_absolute()
                && let Err(why) = executable(&path)
            {
                b.missing.push(format!(
                    "cas[{i}] ({}): sign command {}: {why}",
                    c.name,
                    cfg.shown(&path)
                ));
            }
        }
    }
    let part = match (cfg.renew.is_empty(), cfg.cas.is_empty()) {
        (false, false) => "renews the [[renew]] certificates and signs with the [[cas]]",
        (false, true) => "renews the [[renew]] certificates",
        _ => "signs with the [[cas]]",
    };
    b.finding("files", "files", part)
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
    #[test]
    fn every_recipe_of_the_controller_has_its_needs_here() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../controller/src/plan/recipes");
        let mut names = Vec::new();
        for e in std::fs::read_dir(&dir).unwrap() {
            let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
            for part in text.split("fn name(&self) -> &'static str {").skip(1) {
                // (mod.rs's own tests search for the same text inside a string.)
                let name = part.split('"').nth(1).unwrap_or_default();
                if !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c == '-') {
                    names.push(name.to_owned());
                }
            }
        }
        assert!(names.len() >= 10, "{names:?}");
        for n in &names {
            assert!(
                n == "files" || RECIPES.iter().any(|r| r.recipe == n),
                "recipe {n} has no needs in doctor::RECIPES"
            );
        }
        // Every tool a recipe names is one the tool findings check, at the same default path.
        for r in RECIPES {
            let known = tools_of(r.platform);
            for t in r.tools.iter().chain(r.optional) {
                assert!(
                    known.iter().any(|k| k.name == *t),
                    "{} on {}: {t} not in tools_of",
                    r.recipe,
                    r.platform
                );
            }
        }
    }

    #[test]
    fn recipes_name_what_keeps_them_from_running() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        for t in [
            "usr/lib/vmware-vmdir/bin/vdcrepadmin",
            "usr/lib/vmware-vmca/bin/certool",
            "usr/lib/vmware-vmafd/bin/vecs-cli",
            "usr/lib/vmware-vmafd/bin/dir-cli",
            "opt/likewise/bin/lwregshell",
            // ldapsearch where the VCSA has it, not in /usr/bin; no ldapmodify at all.
            "opt/likewise/bin/ldapsearch",
            "bin/service-control",
            "usr/lib/vmware-vmon/vmon-cli",
            "usr/bin/openssl",
        ] {
            exe(&root.join(t), 0o755);
        }
        std::fs::create_dir_all(root.join("var/lib/vmware/vmca")).unwrap();
        std::fs::write(root.join("var/lib/vmware/vmca/root.cer"), "x").unwrap();
        std::fs::create_dir_all(root.join("etc/certfleet")).unwrap();
        let pw = root.join("etc/certfleet/sso.pass");
        std::fs::write(&pw, "secret\n").unwrap();
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).unwrap();
        let cfg = cfg_at(
            root,
            "[settings]\n\"vsphere.sso_password_file\" = \"/etc/certfleet/sso.pass\"\n",
        );
        let f = check_recipes(&cfg, &["vsphere".into()]);
        let by = |f: &[Finding], name: &str| {
            f.iter()
                .find(|x| x.detail.starts_with(&format!("{name} (")))
                .unwrap_or_else(|| panic!("{name}: {f:#?}"))
                .clone()
        };
        let sts = by(&f, "vsphere-sts");
        assert_eq!(sts.level, Level::Fail, "{sts:?}");
        assert!(
            sts.detail.contains("ldapmodify at /usr/bin/ldapmodify"),
            "{sts:?}"
        );
        assert!(
            !sts.detail.contains("ldapsearch"),
            "found in /opt/likewise/bin: {sts:?}"
        );
        assert!(
            sts.detail.contains("/etc/certfleet/sso.pass: mode 644"),
            "{sts:?}"
        );
        assert!(
            sts.fix.contains("chmod 600 /etc/certfleet/sso.pass"),
            "{sts:?}"
        );
        // Solution users need no ldapmodify: they run, but the password is readable by all.
        let su = by(&f, "vsphere-solution-users");
        assert_eq!(su.level, Level::Warn, "{su:?}");
        assert!(!su.detail.contains("ldapmodify"), "{su:?}");
        assert!(
            su.detail
                .contains("/etc/certfleet/sso.pass: mode 644, anyone on this host"),
            "{su:?}"
        );
        // No vCenter password setting: the ESXi recipe says which setting.
        let esxi = by(&f, "esxi-hosts");
        assert!(
            esxi.detail.contains("esxi.vim_password_file is not set")
                && esxi.detail.contains("esxi.vim_url is not set"),
            "{esxi:?}"
        );

        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
        exe(&root.join("usr/bin/ldapmodify"), 0o755);
        let f = check_recipes(&cfg, &["vsphere".into()]);
        assert_eq!(by(&f, "vsphere-sts").level, Level::Ok, "{f:#?}");
        // psql is optional: ready, doing less.
        let ssl = by(&f, "vsphere-machine-ssl");
        assert_eq!(ssl.level, Level::Note, "{ssl:?}");
        assert!(ssl.detail.contains("without psql"), "{ssl:?}");
        // Only the recipes of this host's platforms.
        assert!(f.iter().all(|x| !x.detail.starts_with("ovirt")), "{f:#?}");

        // oVirt host: the VDSM directory missing, hosted-engine optional.
        let f = check_recipes(&cfg, &["ovirt_node".into()]);
        let off = by(&f, "ovirt-hosts-offline");
        assert_eq!(off.level, Level::Fail, "{off:?}");
        assert!(off.detail.contains("/etc/pki/vdsm"), "{off:?}");
        assert!(off.detail.contains("systemctl"), "{off:?}");
    }

    #[test]
    fn the_files_recipe_checks_renew_directories_and_the_sign_command() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        exe(&root.join("usr/bin/openssl"), 0o755);
        std::fs::create_dir_all(root.join("etc/app/tls")).unwrap();
        std::fs::create_dir_all(root.join("srv/ca")).unwrap();
        let cfg = cfg_at(
            root,
            "[[renew]]\ncert = \"/etc/app/tls/app.pem\"\nkey = \"/etc/app/private/app.key\"\nissuer = \"corp\"\n\
             [[cas]]\nname = \"corp\"\ndir = \"/srv/ca\"\ncommand = [\"/usr/local/bin/sign\", \"{csr}\"]\n",
        );
        let f = check_recipes(&cfg, &[]);
        assert_eq!(f.len(), 1, "{f:#?}");
        assert_eq!(f[0].level, Level::Fail, "{f:#?}");
        assert!(
            f[0].detail.contains(
                "renew[0].key /etc/app/private/app.key: directory /etc/app/private does not exist"
            ),
            "{f:#?}"
        );
        assert!(!f[0].detail.contains("renew[0].cert"), "{f:#?}");
        assert!(
            f[0].detail
                .contains("cas[0] (corp): sign command /usr/local/bin/sign: not found"),
            "{f:#?}"
        );
        std::fs::create_dir_all(root.join("etc/app/private")).unwrap();
        exe(&root.join("usr/local/bin/sign"), 0o755);
        let f = check_recipes(&cfg, &[]);
        assert_eq!(f[0].level, Level::Ok, "{f:#?}");
        assert!(f[0].detail.contains("ready"), "{f:#?}");
    }
}

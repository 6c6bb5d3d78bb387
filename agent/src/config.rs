//! Agent configuration: the TOML file given with `--config`, plus the root prefix.
//!
//! Runtime behaviour comes from flags; what the host looks like (root prefix, tool paths,
//! extra files and endpoints to watch) comes from this file, so the same agent runs on a VCSA
//! and in a test against a simulated host. Every problem in the file is reported at once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The parsed configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Root prefix under which host paths (and default tool paths) are resolved.
    #[serde(default = "default_root")]
    pub root: PathBuf,
    /// Collectors to run; empty means auto-detect.
    #[serde(default)]
    pub platforms: Vec<String>,
    /// Explicit tool paths, by tool name (`vecs-cli`, `gkectl`, `openssl`, …). Used as given;
    /// tools not listed are looked up at their usual path under `root`.
    #[serde(default)]
    pub tools: BTreeMap<String, PathBuf>,
    /// How long one tool may run before it is killed.
    #[serde(default = "default_tool_timeout", with = "humantime_serde_compat")]
    pub tool_timeout: Duration,
    /// How often to rescan while connected.
    #[serde(default = "default_scan_interval", with = "humantime_serde_compat")]
    pub scan_interval: Duration,
    /// Extra certificate files to watch.
    #[serde(default)]
    pub files: Vec<FileWatch>,
    /// TLS endpoints to probe.
    #[serde(default)]
    pub endpoints: Vec<EndpointWatch>,
    /// Certificate files renewable by CSR (the `files` recipe).
    #[serde(default)]
    pub renew: Vec<RenewFile>,
    /// Certificate authorities this host holds and may sign with (`ca.sign`).
    #[serde(default)]
    pub cas: Vec<CaConfig>,
    /// Platform-specific settings (e.g. `vsphere.ldap_uri`, `gke.workdir`), free-form per
    /// collector.
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
    /// Remote commands (`certfleet exec`) this host allows: `[[exec.allow]]` rules, none by
    /// default (see [`crate::remote_exec`]).
    #[serde(default)]
    pub exec: crate::remote_exec::ExecSection,
    /// Renewers other than certfleet that no collector can see (`[[renewers]]`, see
    /// [`crate::collect::renewers`]).
    #[serde(default)]
    pub renewers: Vec<crate::collect::renewers::Declared>,
    /// External consumers that pin a certificate (`[[pins]]`, see [`crate::pins`]).
    #[serde(default)]
    pub pins: Vec<crate::pins::PinDecl>,
}

/// A glob of certificate files.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileWatch {
    /// Glob patterns (host paths, resolved under root).
    pub paths: Vec<String>,
    /// Role given to what is found.
    #[serde(default = "default_file_role")]
    pub role: String,
    /// Password for PKCS#12 files, inline (discouraged: `check-config` reports it; use
    /// `password_file`).
    #[serde(default)]
    pub password: Option<String>,
    /// File holding the PKCS#12 password (a host path under root; one line, trailing newline
    /// ignored), read when the config is loaded.
    #[serde(default)]
    pub password_file: Option<String>,
    /// The PKCS#12 files have no password (`openssl pkcs12 -export -passout pass:`, or no
    /// encryption and no MAC at all). Excludes `password`.
    #[serde(default)]
    pub no_password: bool,
}

/// A certificate file renewable by CSR: `csr.create` here, `ca.sign` on the CA's agent,
/// `cert.install` back here.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewFile {
    /// Certificate path.
    pub cert: String,
    /// Key path (stays on this host; the CSR is made from it).
    pub key: String,
    /// Name of the CA that signs it (an agent with a matching `[[cas]]`).
    pub issuer: String,
    /// Units to restart after installing.
    #[serde(default)]
    pub restart: Vec<String>,
    /// Mode of the installed file (octal string).
    #[serde(default = "default_cert_mode")]
    pub mode: String,
    /// Owner.
    #[serde(default)]
    pub owner: Option<String>,
    /// Group.
    #[serde(default)]
    pub group: Option<String>,
    /// Validity in days (0 = the CA's default).
    #[serde(default)]
    pub days: u32,
    /// Endpoint that must serve the new certificate afterwards.
    #[serde(default)]
    pub verify_endpoint: Option<String>,
    /// More paths that get the same certificate.
    #[serde(default)]
    pub also: Vec<String>,
}

fn default_cert_mode() -> String {
    "0644".into()
}

/// A CA held on this host, used by the `ca.sign` action.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaConfig {
    /// Name recipes refer to.
    pub name: String,
    /// Working directory (host path, under root) for the sign command.
    pub dir: String,
    /// Sign command; `{csr}`, `{out}`, `{days}`, `{name}` are substituted. `openssl` means the
    /// configured openssl tool.
    pub command: Vec<String>,
    /// Where the CSR is written, relative to `dir`.
    #[serde(default = "default_requests")]
    pub requests: String,
    /// Where the command writes the certificate, relative to `dir`.
    #[serde(default = "default_output")]
    pub output: String,
    /// Default validity in days.
    #[serde(default = "default_days")]
    pub days: u32,
    /// The CA's `openssl ca` database (openssl.cnf `database`), relative to `dir`. A step
    /// interrupted after signing looks here to find what it signed instead of signing twice.
    #[serde(default = "default_database")]
    pub database: String,
    /// Where `openssl ca` keeps a copy of each certificate as `<SERIAL>.pem` (openssl.cnf
    /// `new_certs_dir`), relative to `dir`.
    #[serde(default = "default_new_certs_dir")]
    pub new_certs_dir: String,
}

fn default_database() -> String {
    "index.txt".into()
}
fn default_new_certs_dir() -> String {
    "newcerts".into()
}
fn default_requests() -> String {
    "requests/{name}.req".into()
}
fn default_output() -> String {
    "certs/{name}.cer".into()
}
fn default_days() -> u32 {
    398
}

/// A TLS endpoint to probe.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointWatch {
    /// `host:port`.
    pub address: String,
    /// SNI name; defaults to the host part.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Role given to the served certificate.
    #[serde(default = "default_endpoint_role")]
    pub role: String,
    /// File holding the certificate that *should* be served (flags "renewed on disk but the
    /// service still serves the old one").
    #[serde(default)]
    pub expect_file: Option<String>,
}

fn default_root() -> PathBuf {
    PathBuf::from("/")
}
fn default_tool_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_scan_interval() -> Duration {
    Duration::from_secs(3600)
}
fn default_file_role() -> String {
    "file.custom".into()
}
fn default_endpoint_role() -> String {
    "endpoint.tls".into()
}

/// Known keys of each table of the file, to report every unknown key at once (serde's
/// `deny_unknown_fields` stops at the first).
const KNOWN_KEYS: &[(&str, &[&str])] = &[
    (
        "",
        &[
            "root",
            "platforms",
            "tools",
            "tool_timeout",
            "scan_interval",
            "files",
            "endpoints",
            "renew",
            "cas",
            "settings",
            "exec",
            "renewers",
            "pins",
        ],
    ),
    ("renewers", crate::collect::renewers::KEYS),
    ("pins", crate::pins::DECL_KEYS),
    (
        "files",
        &["paths", "role", "password", "password_file", "no_password"],
    ),
    (
        "endpoints",
        &["address", "server_name", "role", "expect_file"],
    ),
    (
        "renew",
        &[
            "cert",
            "key",
            "issuer",
            "restart",
            "mode",
            "owner",
            "group",
            "days",
            "verify_endpoint",
            "also",
        ],
    ),
    (
        "cas",
        &[
            "name",
            "dir",
            "command",
            "requests",
            "output",
            "days",
            "database",
            "new_certs_dir",
        ],
    ),
];

/// Known keys of `[exec]` and of each `[[exec.allow]]` rule.
const EXEC_KEYS: &[&str] = &["allow"];
const EXEC_RULE_KEYS: &[&str] = &[
    "name",
    "command",
    "args",
    "rest",
    "run_as",
    "timeout",
    "env",
    "max_output",
];

/// Unknown keys of `[exec]` and its rules (reported like the others), removed so that the
/// other checks still run.
fn exec_unknown_keys(table: &mut toml::Table) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(toml::Value::Table(exec)) = table.get_mut("exec") else {
        return problems;
    };
    for k in exec.keys().filter(|k| !EXEC_KEYS.contains(&k.as_str())) {
        problems.push(format!(
            "exec.{k}: unknown key (known: {})",
            EXEC_KEYS.join(", ")
        ));
    }
    exec.retain(|k, _| EXEC_KEYS.contains(&k));
    if let Some(toml::Value::Array(rules)) = exec.get_mut("allow") {
        for (i, rule) in rules.iter_mut().enumerate() {
            if let toml::Value::Table(t) = rule {
                for k in t.keys().filter(|k| !EXEC_RULE_KEYS.contains(&k.as_str())) {
                    problems.push(format!(
                        "exec.allow[{i}].{k}: unknown key (known: {})",
                        EXEC_RULE_KEYS.join(", ")
                    ));
                }
                t.retain(|k, _| EXEC_RULE_KEYS.contains(&k));
            }
        }
    }
    problems
}

/// What `check-config` needs to know about the host beyond the file: whether accounts and
/// units exist. The agent answers with the system's user database and `systemctl`; tests with
/// a fixed list.
pub trait HostFacts {
    /// Whether a user account of that name exists.
    fn user_exists(&self, name: &str) -> bool;
    /// Whether a group of that name exists.
    fn group_exists(&self, name: &str) -> bool;
    /// Whether a systemd unit of that name exists, asking `systemctl` (the configured tool, as
    /// restarts use it); `Err`: could not tell, with why.
    fn unit_exists(&self, systemctl: &Path, name: &str) -> Result<bool, String>;
}

/// Unknown keys anywhere in the file (`files[1].pasword: unknown key (known: …)`).
fn unknown_keys(table: &toml::Table) -> Vec<String> {
    let known = |section: &str| {
        KNOWN_KEYS
            .iter()
            .find(|(s, _)| *s == section)
            .map_or(&[][..], |(_, k)| *k)
    };
    let mut problems = Vec::new();
    for (k, v) in table {
        if !known("").contains(&k.as_str()) {
            problems.push(format!(
                "{k}: unknown key (known: {})",
                known("").join(", ")
            ));
            continue;
        }
        let keys = known(k);
        if keys.is_empty() {
            continue;
        }
        if let toml::Value::Array(items) = v {
            for (i, item) in items.iter().enumerate() {
                if let toml::Value::Table(t) = item {
                    for key in t.keys().filter(|key| !keys.contains(&key.as_str())) {
                        problems.push(format!(
                            "{k}[{i}].{key}: unknown key (known: {})",
                            keys.join(", ")
                        ));
                    }
                }
            }
        }
    }
    problems
}

impl AgentConfig {
    /// Everything wrong with the config file at `path`, reported together: TOML syntax, unknown
    /// keys, values ([`AgentConfig::validate`]), inline passwords, password files that cannot be
    /// read, owners and groups that do not exist, units to restart that do not exist. Empty
    /// when the file is fine. `root` overrides the file's root prefix (as `--root` does).
    pub fn check_file(path: &Path, root: Option<&Path>, host: &dyn HostFacts) -> Vec<String> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => return vec![format!("cannot read {}: {e}", path.display())],
        };
        let mut table: toml::Table = match text.parse() {
            Ok(t) => t,
            Err(e) => return vec![format!("not valid TOML: {e}")],
        };
        let mut problems = unknown_keys(&table);
        problems.extend(exec_unknown_keys(&mut table));
        // Parse what remains without the unknown keys, so that the other checks still run.
        table.retain(|k, _| KNOWN_KEYS[0].1.contains(&k));
        for (section, keys) in &KNOWN_KEYS[1..] {
            if let Some(toml::Value::Array(items)) = table.get_mut(*section) {
                for item in items.iter_mut() {
                    if let toml::Value::Table(t) = item {
                        t.retain(|k, _| keys.contains(&k));
                    }
                }
            }
        }
        let mut cfg: AgentConfig = match table.try_into() {
            Ok(c) => c,
            Err(e) => {
                problems.push(e.to_string().trim().to_owned());
                return problems;
            }
        };
        if let Some(r) = root {
            cfg.root = r.to_path_buf();
        }
        problems.extend(cfg.validate());
        for (i, f) in cfg.files.iter().enumerate() {
            if f.password.is_some() {
                problems.push(format!(
                    "files[{i}].password: a password inline in the config; put it in a file only root can read and set password_file = \"/etc/certfleet/<name>.pass\""
                ));
            }
        }
        problems.extend(cfg.resolve_secrets());
        for (i, r) in cfg.exec.allow.iter().enumerate() {
            let at = format!("exec.allow[{i}] ({})", r.name);
            let cmd = Path::new(&r.command);
            if cmd.is_absolute() {
                match std::fs::metadata(cmd) {
                    Ok(m)
                        if m.is_file()
                            && std::os::unix::fs::PermissionsExt::mode(&m.permissions())
                                & 0o111
                                != 0 => {}
                    Ok(_) => problems.push(format!(
                        "{at}: command {} is not an executable file",
                        r.command
                    )),
                    Err(e) => problems.push(format!("{at}: command {}: {e}", r.command)),
                }
            }
            if let Some(u) = &r.run_as
                && !u.trim().is_empty()
                && !host.user_exists(u)
            {
                problems.push(format!("{at}: run_as: no user {u:?} on this host"));
            }
        }
        for (i, r) in cfg.renew.iter().enumerate() {
            if let Some(o) = &r.owner
                && !host.user_exists(o)
            {
                problems.push(format!("renew[{i}].owner: no user {o:?} on this host"));
            }
            if let Some(g) = &r.group
                && !host.group_exists(g)
            {
                problems.push(format!("renew[{i}].group: no group {g:?} on this host"));
            }
            for u in &r.restart {
                match host.unit_exists(&cfg.tool("systemctl", "/usr/bin/systemctl"), u) {
                    Ok(true) => {}
                    Ok(false) => problems.push(format!(
                        "renew[{i}].restart: no systemd unit {u:?} on this host"
                    )),
                    Err(e) => problems.push(format!(
                        "renew[{i}].restart: cannot tell whether unit {u:?} exists: {e}"
                    )),
                }
            }
        }
        problems
    }

    /// Reads each `files[].password_file` (a host path under the root prefix) into the watch's
    /// password. Returns what could not be read; call after the root prefix is final.
    pub fn resolve_secrets(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        let root = self.root.clone();
        for (i, f) in self.files.iter_mut().enumerate() {
            let Some(p) = &f.password_file else { continue };
            if f.password.is_some() || f.no_password {
                problems.push(format!(
                    "files[{i}]: password_file with password or no_password = true; keep one"
                ));
                continue;
            }
            let full = root.join(p.trim_start_matches('/'));
            match std::fs::read_to_string(&full) {
                Ok(s) => f.password = Some(s.trim_end_matches(['\r', '\n']).to_owned()),
                Err(e) => problems.push(format!(
                    "files[{i}].password_file: cannot read {}: {e}",
                    full.display()
                )),
            }
        }
        problems
    }
}

mod humantime_serde_compat {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}")))
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            root: default_root(),
            platforms: Vec::new(),
            tools: BTreeMap::new(),
            tool_timeout: default_tool_timeout(),
            scan_interval: default_scan_interval(),
            files: Vec::new(),
            endpoints: Vec::new(),
            cas: Vec::new(),
            renew: Vec::new(),
            settings: BTreeMap::new(),
            exec: Default::default(),
            renewers: Vec::new(),
            pins: Vec::new(),
        }
    }
}

/// Allowed `tool_timeout` (a tool that needs more than an hour is hung).
pub const TOOL_TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(3600));
/// Allowed `scan_interval`: at least a second (zero would spin), at most 30 days.
pub const SCAN_INTERVAL_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(30 * 86_400));
/// Longest validity, in days, a `[[renew]]` or `[[cas]]` entry may ask for (ten years).
pub const MAX_DAYS: u32 = 3650;

/// Every collector name the agent knows.
pub const COLLECTORS: &[&str] = &[
    "vsphere",
    "ovirt_engine",
    "ovirt_node",
    "gke_admin",
    "kubeadm",
    "files",
    "endpoint",
    "esxi",
];

impl AgentConfig {
    /// Reads the secret (a password, a token) in the file at host path `rel`, without its line
    /// end; refuses a file that group or others can read. Errors name `what` and the path.
    pub fn read_secret_file(&self, what: &str, rel: &str) -> Result<String, String> {
        use std::os::unix::fs::PermissionsExt;
        let p = self.host_path(rel);
        let meta = std::fs::metadata(&p).map_err(|e| format!("{what} {rel}: {e}"))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "{what} {rel} has mode {mode:o}: must not be readable by group or others (chmod 600)"
            ));
        }
        Ok(std::fs::read_to_string(&p)
            .map_err(|e| format!("{what} {rel}: {e}"))?
            .trim_end_matches(['\r', '\n'])
            .to_owned())
    }
}

impl AgentConfig {
    /// Reads and validates a config file; all problems are reported together.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
        let cfg: AgentConfig =
            toml::from_str(&text).map_err(|e| format!("config {}: {e}", path.display()))?;
        let problems = cfg.validate();
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(format!(
                "config {}:\n  - {}",
                path.display(),
                problems.join("\n  - ")
            ))
        }
    }

    /// Everything wrong with this configuration.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for p in &self.platforms {
            if !COLLECTORS.contains(&p.as_str()) {
                problems.push(format!(
                    "unknown platform {p:?} (known: {})",
                    COLLECTORS.join(", ")
                ));
            }
        }
        if !self.root.is_absolute() {
            problems.push(format!("root {:?} must be an absolute path", self.root));
        }
        problems.extend(crate::collect::renewers::validate(&self.renewers));
        for (i, f) in self.files.iter().enumerate() {
            if f.paths.is_empty() {
                problems.push(format!("files[{i}]: no paths"));
            }
            if f.no_password && f.password.is_some() {
                problems.push(format!(
                    "files[{i}]: both password and no_password = true; keep one"
                ));
            }
            for p in &f.paths {
                if let Err(e) = glob::Pattern::new(p) {
                    problems.push(format!("files[{i}]: bad glob {p:?}: {e}"));
                }
            }
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            if e.address
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .is_none()
            {
                problems.push(format!(
                    "endpoints[{i}]: address {:?} is not host:port",
                    e.address
                ));
            }
        }
        let mut bounded = |key: &str, d: Duration, min: Duration, max: Duration| {
            if d < min || d > max {
                problems.push(format!(
                    "{key} = {:?} is out of range: must be between {} and {}",
                    humantime::format_duration(d).to_string(),
                    humantime::format_duration(min),
                    humantime::format_duration(max)
                ));
            }
        };
        bounded(
            "tool_timeout",
            self.tool_timeout,
            TOOL_TIMEOUT_RANGE.0,
            TOOL_TIMEOUT_RANGE.1,
        );
        bounded(
            "scan_interval",
            self.scan_interval,
            SCAN_INTERVAL_RANGE.0,
            SCAN_INTERVAL_RANGE.1,
        );
        for (i, r) in self.renew.iter().enumerate() {
            if r.days > MAX_DAYS {
                problems.push(format!(
                    "renew[{i}]: days = {} is out of range: must be between 0 (the CA's default) and {MAX_DAYS}",
                    r.days
                ));
            }
            if u32::from_str_radix(r.mode.trim_start_matches("0o"), 8)
                .ok()
                .filter(|m| *m <= 0o7777)
                .is_none()
            {
                problems.push(format!(
                    "renew[{i}]: mode {:?} is not an octal file mode (e.g. \"0644\")",
                    r.mode
                ));
            }
        }
        for (i, c) in self.cas.iter().enumerate() {
            if c.days == 0 || c.days > MAX_DAYS {
                problems.push(format!(
                    "cas[{i}] ({}): days = {} is out of range: must be between 1 and {MAX_DAYS}",
                    c.name, c.days
                ));
            }
            if c.command.is_empty() {
                problems.push(format!("cas[{i}] ({}): command is empty", c.name));
            }
        }
        problems.extend(self.exec.problems());
        problems.extend(crate::pins::problems(&self.pins));
        problems
    }

    /// A host path under the root prefix.
    pub fn host_path(&self, path: impl AsRef<Path>) -> PathBuf {
        let p = path.as_ref();
        let rel = p.strip_prefix("/").unwrap_or(p);
        self.root.join(rel)
    }

    /// How a path under the root is shown to operators: as the host sees it (`/etc/…`), not
    /// with the root prefix of a test or chroot.
    pub fn shown(&self, path: &Path) -> String {
        match path.strip_prefix(&self.root) {
            Ok(rel) if self.root != Path::new("/") => format!("/{}", rel.display()),
            _ => path.display().to_string(),
        }
    }

    /// The path of tool `name`: configured explicitly, else `default` under the root.
    pub fn tool(&self, name: &str, default: &str) -> PathBuf {
        self.tools
            .get(name)
            .cloned()
            .unwrap_or_else(|| self.host_path(default))
    }

    /// A free-form collector setting.
    pub fn setting(&self, key: &str) -> Option<&str> {
        self.settings.get(key).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct FakeHost;

    impl HostFacts for FakeHost {
        fn user_exists(&self, name: &str) -> bool {
            name == "root" || name == "www-data"
        }
        fn group_exists(&self, name: &str) -> bool {
            name == "root"
        }
        fn unit_exists(&self, _: &Path, name: &str) -> Result<bool, String> {
            Ok(name == "nginx")
        }
    }

    #[test]
    fn check_file_reports_keys_values_secrets_accounts_and_units_together() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc/certfleet")).unwrap();
        std::fs::write(dir.path().join("etc/certfleet/p12.pass"), "s3cret\n").unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            format!(
                r#"
                root = "{root}"
                scan_intervall = "1h"
                [[files]]
                paths = ["/etc/a/*.p12"]
                password = "inline"
                [[files]]
                paths = ["/etc/b/*.p12"]
                password_file = "/etc/certfleet/p12.pass"
                [[files]]
                paths = ["/etc/c/*.p12"]
                password_file = "/etc/certfleet/missing.pass"
                [[renew]]
                cert = "/etc/nginx/tls/web.pem"
                key = "/etc/nginx/tls/web.key"
                issuer = "corp"
                mode = "0999"
                owner = "nginx-user"
                group = "www"
                restart = ["nginx", "apache2"]
                reload = true
                "#,
                root = dir.path().display()
            ),
        )
        .unwrap();
        let problems = AgentConfig::check_file(&path, None, &FakeHost);
        let all = problems.join("\n");
        for want in [
            "scan_intervall: unknown key",
            "renew[0].reload: unknown key",
            "renew[0]: mode \"0999\" is not an octal file mode",
            "files[0].password: a password inline",
            "files[2].password_file: cannot read",
            "renew[0].owner: no user \"nginx-user\"",
            "renew[0].group: no group \"www\"",
            "renew[0].restart: no systemd unit \"apache2\"",
        ] {
            assert!(all.contains(want), "missing {want:?} in\n{all}");
        }
        assert_eq!(problems.len(), 8, "{all}");

        // The password file is read into the watch.
        let mut cfg: AgentConfig = toml::from_str(&format!(
            "root = \"{}\"\n[[files]]\npaths = [\"/x\"]\npassword_file = \"/etc/certfleet/p12.pass\"\n",
            dir.path().display()
        ))
        .unwrap();
        assert!(cfg.resolve_secrets().is_empty());
        assert_eq!(cfg.files[0].password.as_deref(), Some("s3cret"));

        // Broken TOML is one clear problem, not a panic.
        std::fs::write(&path, "root = [").unwrap();
        let p = AgentConfig::check_file(&path, None, &FakeHost);
        assert!(p.len() == 1 && p[0].starts_with("not valid TOML"), "{p:?}");
    }

    #[test]
    fn check_file_reports_every_exec_rule_problem_and_allows_nothing_by_default() {
        assert!(AgentConfig::default().exec.rules().is_empty());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            r#"
            [exec]
            allowed = []
            [[exec.allow]]
            name = "status"
            command = "/bin/sh"
            args = ["-c", { regex = "(" }]
            run_as = "nobody-here"
            timout = "5s"
            [[exec.allow]]
            name = "missing"
            command = "/nonexistent/bin/tool"
            rest = "any"
            [[exec.allow]]
            name = "not-executable"
            command = "DIR/plain.txt"
            "#
            .replace("DIR", &dir.path().display().to_string()),
        )
        .unwrap();
        std::fs::write(dir.path().join("plain.txt"), "not a program").unwrap();
        let problems = AgentConfig::check_file(&path, None, &FakeHost);
        let all = problems.join("\n");
        for want in [
            "exec.allowed: unknown key (known: allow)",
            "exec.allow[0].timout: unknown key",
            "exec.allow[0] (status): args[1]: bad regex",
            "exec.allow[0] (status): run_as: no user \"nobody-here\" on this host",
            "exec.allow[1] (missing): command /nonexistent/bin/tool: No such file",
            "(not-executable): command DIR/plain.txt is not an executable file",
        ] {
            let want = want.replace("DIR", &dir.path().display().to_string());
            assert!(all.contains(&want), "missing {want:?} in\n{all}");
        }
        assert_eq!(problems.len(), 6, "{all}");
        // The agent refuses to start with it.
        let e = AgentConfig::load(&path).unwrap_err();
        assert!(e.contains("timout"), "{e}");
    }

    #[test]
    fn reports_every_problem_at_once() {
        let cfg: AgentConfig = toml::from_str(
            r#"
            root = "relative"
            platforms = ["vsphere", "bogus"]
            [[files]]
            paths = ["/etc/[x"]
            [[files]]
            paths = ["/etc/*.p12"]
            password = "x"
            no_password = true
            [[endpoints]]
            address = "nohostport"
            "#,
        )
        .unwrap();
        let p = cfg.validate();
        assert_eq!(p.len(), 5, "{p:#?}");
        assert!(
            p.iter()
                .any(|p| p.contains("files[1]: both password and no_password"))
        );
    }

    #[test]
    fn durations_and_counts_are_bounded() {
        let cfg: AgentConfig = toml::from_str(
            r#"
            scan_interval = "0s"
            tool_timeout = "400d"
            [[renew]]
            cert = "/c"
            key = "/k"
            issuer = "ca"
            days = 4000000
            mode = "rw-r--r--"
            [[cas]]
            name = "ca"
            dir = "/ca"
            command = []
            days = 0
            "#,
        )
        .unwrap();
        let p = cfg.validate();
        assert_eq!(p.len(), 6, "{p:#?}");
        assert!(
            p[0].contains("tool_timeout") && p[0].contains("between 1s and 1h"),
            "{p:#?}"
        );
        assert!(
            p[1].contains("scan_interval") && p[1].contains("between 1s and 30days"),
            "{p:#?}"
        );
    }

    #[test]
    fn tools_resolve_under_root_unless_configured() {
        let mut cfg = AgentConfig {
            root: "/sim/vc1".into(),
            ..Default::default()
        };
        assert_eq!(
            cfg.tool("vecs-cli", "/usr/lib/vmware-vmafd/bin/vecs-cli"),
            PathBuf::from("/sim/vc1/usr/lib/vmware-vmafd/bin/vecs-cli")
        );
        cfg.tools
            .insert("openssl".into(), "/usr/bin/openssl".into());
        assert_eq!(
            cfg.tool("openssl", "/usr/bin/openssl"),
            PathBuf::from("/usr/bin/openssl")
        );
    }
}

//! Built-in recipes: each turns a target (agents, roles, "expiring within N days") into a step
//! graph. Platform knowledge lives here and in the agent's collector/action modules only.

use std::collections::BTreeMap;

use certfleet_common::model::CertRecord;

use crate::plan::Target;

pub mod esxi;
pub mod files;
pub mod gke;
pub mod kubeadm;
pub mod ovirt_engine;
pub mod ovirt_hosted_engine;
pub mod ovirt_hosts;
pub mod pins;
pub mod vsphere;

/// What a recipe sees.
pub struct RecipeInput<'a> {
    /// Agents selected as targets (all active agents when none were named), in name order.
    pub targets: Vec<&'a Target>,
    /// Every active agent (CA holders and helpers may be outside the targets), in name order.
    pub agents: Vec<&'a Target>,
    /// Each agent's certificates.
    pub inventory: BTreeMap<String, Vec<CertRecord>>,
    /// Only these roles (empty = the recipe's own).
    pub roles: Vec<String>,
    /// Only certificates expiring before this Unix time (None = regardless of expiry).
    pub expiring_before: Option<i64>,
    /// Recipe parameters.
    pub params: BTreeMap<String, String>,
    /// Each agent's pins as its last report gave them, by agent id.
    pub pins: BTreeMap<String, Vec<certfleet_common::model::Pin>>,
}

/// A step before it is numbered into a plan.
#[derive(Clone, Debug)]
pub struct StepSpec {
    /// Recipe-local key (unique in the plan).
    pub key: String,
    /// Human name.
    pub name: String,
    /// Stage for progress display.
    pub stage: String,
    /// What the step works on.
    pub target: String,
    /// Agent that runs it.
    pub agent: String,
    /// Agent name.
    pub agent_name: String,
    /// Action.
    pub action: String,
    /// Arguments (may hold `{"$ref": "key.field"}`).
    pub args: serde_json::Value,
    /// Keys it waits for.
    pub depends_on: Vec<String>,
    /// Commands it runs.
    pub commands: Vec<String>,
    /// Files it touches.
    pub files: Vec<String>,
    /// Timeout, seconds.
    pub timeout_secs: u32,
}

/// A recipe.
pub trait Recipe: Send + Sync {
    /// Name used on the command line.
    fn name(&self) -> &'static str;
    /// One line about what it does.
    fn about(&self) -> &'static str;
    /// The step graph, or why there is nothing sensible to do.
    fn build(&self, input: &RecipeInput<'_>) -> Result<Vec<StepSpec>, String>;
}

/// Every built-in recipe.
pub fn all() -> Vec<Box<dyn Recipe>> {
    vec![
        Box::new(files::Files),
        Box::new(ovirt_engine::OvirtEngine),
        Box::new(ovirt_hosts::OvirtHosts),
        Box::new(ovirt_hosts::OvirtHostsOffline),
        Box::new(ovirt_hosted_engine::OvirtHostedEngine),
        Box::new(gke::GkeUserCa),
        Box::new(gke::GkeAdminCa),
        Box::new(gke::GkeKubeconfig),
        Box::new(kubeadm::KubeadmCerts),
        Box::new(vsphere::MachineSsl),
        Box::new(vsphere::SolutionUsers),
        Box::new(vsphere::Sts),
        Box::new(vsphere::VmcaRoot),
        Box::new(esxi::EsxiHosts),
        Box::new(pins::PinsRetrust),
    ]
}

/// The `--param` names each built-in recipe reads; any other is refused (a mistyped name would
/// otherwise be ignored and the default used). A recipe not listed is not checked. Kept in step
/// with what the recipes read by `every_param_a_recipe_reads_is_declared`.
const PARAMS: &[(&str, &[&str])] = &[
    ("files", &[]),
    ("ovirt-engine", &["min_days", "ca_window_days", "he_host"]),
    ("ovirt-hosts", &[]),
    ("ovirt-hosts-offline", &["days"]),
    ("ovirt-hosted-engine", &["way", "days", "engine_wait"]),
    ("gke-user-ca", &["cluster", "poll", "rotate_timeout"]),
    ("gke-admin-ca", &["cluster", "rotate_timeout"]),
    ("gke-kubeconfig", &["cluster"]),
    ("kubeadm-certs", &["poll", "pod_start"]),
    ("vsphere-machine-ssl", &[]),
    ("vsphere-solution-users", &[]),
    ("vsphere-sts", &["node"]),
    ("vsphere-vmca-root", &[]),
    ("pins-retrust", &[]),
    (
        "esxi-hosts",
        &[
            "wave_size",
            "max_failures",
            "task_timeout",
            "verify_timeout",
        ],
    ),
];

/// The `--param` names `recipe` takes, or `None` when it does not declare them.
pub fn params_of(recipe: &str) -> Option<&'static [&'static str]> {
    PARAMS.iter().find(|(r, _)| *r == recipe).map(|(_, p)| *p)
}

/// A recipe by name.
pub fn find(name: &str) -> Result<Box<dyn Recipe>, String> {
    all().into_iter().find(|r| r.name() == name).ok_or_else(|| {
        let names: Vec<&'static str> = all().iter().map(|r| r.name()).collect();
        format!("unknown recipe {name:?} (built in: {})", names.join(", "))
    })
}

impl<'a> RecipeInput<'a> {
    /// Every agent targeted, certificates due within 90 days, no roles or params given: the
    /// input the recipes' unit tests build from.
    #[cfg(test)]
    pub fn for_test(agents: Vec<&'a Target>, inventory: BTreeMap<String, Vec<CertRecord>>) -> Self {
        RecipeInput {
            targets: agents.clone(),
            agents,
            inventory,
            roles: vec![],
            expiring_before: Some(certfleet_common::model::now() + 90 * 86_400),
            params: BTreeMap::new(),
            pins: BTreeMap::new(),
        }
    }
}

impl RecipeInput<'_> {
    /// A `--param NAME=VALUE` parsed as `T`, or `default` when not given.
    pub fn param<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, String>
    where
        T::Err: std::fmt::Display,
    {
        match self.params.get(name) {
            Some(v) => v.parse().map_err(|e| format!("--param {name}={v:?}: {e}")),
            None => Ok(default),
        }
    }

    /// A comma-separated `--param NAME=a,b` (empty when not given).
    pub fn param_list(&self, name: &str) -> Vec<String> {
        self.params
            .get(name)
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether a certificate is in scope by expiry.
    pub fn due(&self, not_after: i64) -> bool {
        self.expiring_before.is_none_or(|t| not_after <= t)
    }

    /// The certificate an agent reported at `path` (file location).
    pub fn cert_at(&self, agent: &str, path_suffix: &str) -> Option<&CertRecord> {
        self.inventory.get(agent)?.iter().find(|c| {
            c.locations.iter().any(|l| {
                (l.kind == "file" || l.kind == "pkcs12")
                    && (l.path == path_suffix || l.path.ends_with(path_suffix))
            })
        })
    }
}

/// "Nothing to renew" for a recipe whose scope came out empty, with the reasons some candidates
/// were left out (an operator wants to know why a certificate is not in the plan).
pub fn nothing_in_scope(what: &str, problems: &[String]) -> String {
    let mut msg = format!("nothing to renew: {what}");
    if !problems.is_empty() {
        msg.push_str(&format!(" ({})", problems.join("; ")));
    }
    msg
}

/// `CN=a, O=b` (x509-parser's order, RFC 4514-ish) → `/CN=a/O=b` for `openssl req -subj`.
pub fn openssl_subject(dn: &str) -> String {
    let mut out = String::new();
    for part in dn.split(", ") {
        out.push('/');
        out.push_str(&part.replace('/', "\\/"));
    }
    out
}

/// A certificate record for the recipes' unit tests: `role` at file `path`, valid from a day ago
/// for `days` more days (negative: expired).
#[cfg(test)]
pub(crate) fn test_cert(
    role: &str,
    subject: &str,
    issuer: &str,
    path: &str,
    days: i64,
) -> CertRecord {
    let now = certfleet_common::model::now();
    let t = certfleet_common::model::format_time;
    serde_json::from_value(serde_json::json!({
        "fingerprint_sha256": format!("{role}{subject}"), "subject": subject,
        "issuer": issuer, "serial": "1000", "sans": [],
        "not_before": t(now - 86_400), "not_after": t(now + days * 86_400),
        "key_algorithm": "RSA", "key_bits": 2048, "is_ca": false,
        "subject_key_id": "", "authority_key_id": "", "role": role,
        "locations": [{"kind": "file", "path": path}],
    }))
    .unwrap()
}

#[cfg(test)]
mod param_tests {
    use super::*;

    /// Reads every recipe source file and checks that each parameter name a recipe in it reads
    /// (`param("x"`, `param_list("x"`, `params.get("x"`, `params.contains_key("x"`) is declared
    /// in [`PARAMS`] for a recipe of that file: a new parameter must be declared or the
    /// controller refuses it.
    #[test]
    fn every_param_a_recipe_reads_is_declared() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/plan/recipes");
        let mut problems = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.file_name().is_some_and(|n| n == "mod.rs") {
                continue;
            }
            let src = std::fs::read_to_string(&path).unwrap();
            let quoted_after = |marker: &str| -> Vec<String> {
                src.match_indices(marker)
                    .filter_map(|(i, _)| {
                        let rest = src[i + marker.len()..].trim_start();
                        let rest = rest.strip_prefix('"')?;
                        Some(rest[..rest.find('"')?].to_owned())
                    })
                    .collect()
            };
            let names = quoted_after("fn name(&self) -> &'static str {");
            let declared: Vec<&str> = names
                .iter()
                .filter_map(|n| params_of(n))
                .flatten()
                .copied()
                .collect();
            if names.iter().all(|n| params_of(n).is_none()) {
                continue; // no recipe of this file is checked
            }
            for marker in [
                "param(",
                "param_list(",
                "params.get(",
                "params.contains_key(",
            ] {
                for p in quoted_after(marker) {
                    if !declared.contains(&p.as_str()) {
                        problems.push(format!(
                            "{}: --param {p} is read but not declared in PARAMS",
                            path.display()
                        ));
                    }
                }
            }
        }
        assert!(problems.is_empty(), "{}", problems.join("\n"));
        for r in all() {
            assert!(
                params_of(r.name()).is_some(),
                "recipe {} declares no params",
                r.name()
            );
        }
    }
}

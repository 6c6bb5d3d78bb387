//! `files`: generic CSR renewal of file certificates.
//!
//! For every certificate an agent is configured to renew (`[[renew]]` in its config) that is
//! in scope: a CSR is made on that host from its own key (`csr.create`), the agent holding the
//! issuing CA signs it with `openssl ca` (`ca.sign`), and the certificate goes back to the host
//! (`cert.install`: backup, atomic write with mode and owner, key check, restart, endpoint
//! check, rollback on failure). Private keys never leave their host.

use serde_json::json;

use super::{Recipe, RecipeInput, StepSpec, openssl_subject};

/// Issuer name meaning "an operator signs the CSR out of band".
pub const OPERATOR_ISSUER: &str = "operator";

/// The recipe.
pub struct Files;

impl Recipe for Files {
    fn name(&self) -> &'static str {
        "files"
    }

    fn about(&self) -> &'static str {
        "renew file certificates by CSR: key stays on the host, a CA agent signs with openssl ca"
    }

    fn build(&self, input: &RecipeInput<'_>) -> Result<Vec<StepSpec>, String> {
        let mut steps = Vec::new();
        let mut problems = Vec::new();
        for agent in &input.targets {
            for (n, spec) in agent.renewable.iter().enumerate() {
                let Some(cert) = input.cert_at(&agent.id, &spec.cert) else {
                    problems.push(format!(
                        "{}: {} is not in the inventory yet (rescan?)",
                        agent.name, spec.cert
                    ));
                    continue;
                };
                if !input.due(cert.not_after) {
                    continue;
                }
                if !input.roles.is_empty()
                    && !input
                        .roles
                        .iter()
                        .any(|r| cert.role.starts_with(r.as_str()))
                {
                    continue;
                }
                // `issuer = "operator"`: a CA no agent holds (a corporate CA behind a ticket, an
                // HSM); the plan waits for the operator to sign the CSR and supply the result.
                let ca = if spec.issuer == OPERATOR_ISSUER {
                    None
                } else {
                    match input.agents.iter().find(|a| a.cas.contains(&spec.issuer)) {
                        Some(ca) => Some(*ca),
                        None => {
                            problems.push(format!(
                                "{}: no connected agent holds CA {:?} for {}",
                                agent.name, spec.issuer, spec.cert
                            ));
                            continue;
                        }
                    }
                };
                let target = format!("{}:{}", agent.name, spec.cert);
                let k = |s: &str| format!("{}-{n}-{s}", agent.name);
                let subject = openssl_subject(&cert.subject);
                let req_name = format!("{}-{n}", agent.name)
                    .replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "-");
                steps.push(StepSpec {
                    key: k("csr"),
                    name: format!("CSR for {} from its key", spec.cert),
                    stage: "csr".into(),
                    target: target.clone(),
                    agent: agent.id.clone(),
                    agent_name: agent.name.clone(),
                    action: "csr.create".into(),
                    args: json!({"key": spec.key, "subject": subject}),
                    depends_on: vec![],
                    commands: vec![format!(
                        "openssl req -new -key {} -subj '{subject}'",
                        spec.key
                    )],
                    files: vec![spec.key.clone()],
                    timeout_secs: 60,
                });
                let mut sign_args = json!({"ca": spec.issuer, "name": req_name, "csr_pem": {"$ref": format!("{}.csr_pem", k("csr"))}});
                if spec.days > 0 {
                    sign_args["days"] = json!(spec.days);
                }
                steps.push(match ca {
                    Some(ca) => StepSpec {
                        key: k("sign"),
                        name: format!("sign with CA {}", spec.issuer),
                        stage: "sign".into(),
                        target: target.clone(),
                        agent: ca.id.clone(),
                        agent_name: ca.name.clone(),
                        action: "ca.sign".into(),
                        args: sign_args,
                        depends_on: vec![k("csr")],
                        commands: vec![format!(
                            "openssl ca -batch … -in requests/{req_name}.req -out certs/{req_name}.cer (CA {})",
                            spec.issuer
                        )],
                        files: vec![format!("requests/{req_name}.req"), format!("certs/{req_name}.cer")],
                        timeout_secs: 120,
                    },
                    None => StepSpec {
                        key: k("sign"),
                        name: format!("operator signs the CSR for {}", spec.cert),
                        stage: "sign".into(),
                        target: target.clone(),
                        agent: String::new(),
                        agent_name: "operator".into(),
                        action: crate::plan::OPERATOR_SIGN.into(),
                        args: sign_args,
                        depends_on: vec![k("csr")],
                        commands: vec![
                            "certfleet plan csr PLAN STEP > req.pem".into(),
                            "(sign req.pem with the issuing CA)".into(),
                            "certfleet plan supply PLAN STEP cert.pem".into(),
                        ],
                        files: vec![],
                        timeout_secs: 0,
                    },
                });
                let mut targets = vec![
                    json!({"path": spec.cert, "mode": spec.mode, "owner": nonempty(&spec.owner), "group": nonempty(&spec.group)}),
                ];
                for p in &spec.also {
                    targets.push(json!({"path": p, "mode": spec.mode, "owner": nonempty(&spec.owner), "group": nonempty(&spec.group)}));
                }
                let mut files = vec![spec.cert.clone()];
                files.extend(spec.also.iter().cloned());
                let mut commands = vec![format!("back up and replace {}", files.join(", "))];
                commands.extend(
                    spec.restart
                        .iter()
                        .map(|u| format!("systemctl restart {u} && systemctl is-active {u}")),
                );
                if !spec.verify_endpoint.is_empty() {
                    commands.push(format!(
                        "verify {} serves the new certificate",
                        spec.verify_endpoint
                    ));
                }
                steps.push(StepSpec {
                    key: k("install"),
                    name: format!("install {}", spec.cert),
                    stage: "install".into(),
                    target,
                    agent: agent.id.clone(),
                    agent_name: agent.name.clone(),
                    action: "cert.install".into(),
                    args: json!({
                        "cert_pem": {"$ref": format!("{}.cert_pem", k("sign"))},
                        "targets": targets,
                        "key": spec.key,
                        "restart": spec.restart,
                        "verify_endpoint": nonempty(&spec.verify_endpoint),
                    }),
                    depends_on: vec![k("sign")],
                    commands,
                    files,
                    timeout_secs: 300,
                });
            }
        }
        if steps.is_empty() {
            return Err(super::nothing_in_scope(
                "no configured file certificate is in scope",
                &problems,
            ));
        }
        Ok(steps)
    }
}

fn nonempty(s: &str) -> serde_json::Value {
    if s.is_empty() {
        serde_json::Value::Null
    } else {
        json!(s)
    }
}

//! vSphere recipes (`shared/reference/vsphere.md` §9), over agents running the `vsphere`
//! collector and the agent's `vsphere.*` actions:
//!
//! * `vsphere-machine-ssl` — per vCenter whose Machine SSL certificate is due: replication gate,
//!   then new VMCA-signed certificate for the PNID into VECS with backup, restart of all
//!   services and a check that the endpoint serves it. Nodes go one at a time (§9.6: per-node
//!   objects node by node), each gate waiting for the previous node to finish.
//! * `vsphere-solution-users` — the same shape for the solution-user certificates.
//! * `vsphere-sts` — the STS signing certificate is domain-wide (§9.6.2): replication is checked
//!   on every node first, the fixsts/vCert LDAP replacement runs on one node only, then services
//!   restart on every vCenter of the domain one at a time (§9.6.4), each checked.
//!
//! All selected targets are treated as one SSO domain and serialized (param `domain` only labels
//! the plan); plan one domain at a time.

use serde_json::json;

use super::{Recipe, RecipeInput, StepSpec};
use crate::fleet::AgentRecord;

const VECS: &str = "/usr/lib/vmware-vmafd/bin/vecs-cli";
const CERTOOL: &str = "/usr/lib/vmware-vmca/bin/certool";
const GATE_CMD: &str = "/usr/lib/vmware-vmdir/bin/vdcrepadmin -f showpartnerstatus -h localhost -u administrator -w ****  (refuse unless every partner: Host available: Yes, Partner is 0 changes behind.)";
const RESTART_CMDS: [&str; 4] = [
    "/bin/service-control --stop --all",
    "/bin/service-control --start --all",
    "/bin/service-control --status --all  (poll until nothing Stopped/StartPending)",
    "verify vsphere.https_address serves VECS MACHINE_SSL_CERT/__MACHINE_CERT",
];

fn vsphere_targets<'a>(input: &RecipeInput<'a>) -> Vec<&'a AgentRecord> {
    input
        .targets
        .iter()
        .copied()
        .filter(|a| {
            a.platforms.iter().any(|p| p == "vsphere")
                || input
                    .inventory
                    .get(&a.id)
                    .is_some_and(|c| c.iter().any(|c| c.role.starts_with("vsphere.")))
        })
        .collect()
}

/// Whether `agent` reported a certificate with a role starting with `role` that is due.
fn due(input: &RecipeInput<'_>, agent: &str, role: &str) -> bool {
    input.inventory.get(agent).is_some_and(|certs| {
        certs
            .iter()
            .any(|c| c.role.starts_with(role) && input.due(c.not_after))
    })
}

/// Steps of one node share the node as their target; steps of the domain-wide STS change share
/// the domain, so the engine's max-parallel count never holds a node's later steps back.
fn gate(agent: &AgentRecord, key: String, after: Option<String>, target: &str) -> StepSpec {
    StepSpec {
        key,
        name: "replication gate (vdcrepadmin showpartnerstatus)".into(),
        stage: "gate".into(),
        target: target.into(),
        agent: agent.id.clone(),
        agent_name: agent.name.clone(),
        action: "vsphere.replication_gate".into(),
        args: json!({}),
        depends_on: after.into_iter().collect(),
        commands: vec![GATE_CMD.into()],
        files: vec![],
        timeout_secs: 60,
    }
}

fn restart(agent: &AgentRecord, key: String, after: Vec<String>, target: &str) -> StepSpec {
    StepSpec {
        key,
        name: "restart all services and verify the endpoint".into(),
        stage: "restart".into(),
        target: target.into(),
        agent: agent.id.clone(),
        agent_name: agent.name.clone(),
        action: "vsphere.restart_services".into(),
        args: json!({}),
        depends_on: after,
        commands: RESTART_CMDS.iter().map(|c| c.to_string()).collect(),
        files: vec![],
        timeout_secs: 600,
    }
}

/// `vsphere-machine-ssl`.
pub struct MachineSsl;

impl Recipe for MachineSsl {
    fn name(&self) -> &'static str {
        "vsphere-machine-ssl"
    }

    fn about(&self) -> &'static str {
        "renew vCenter Machine SSL with VMCA (certool), node by node behind a replication gate, restart and verify"
    }

    fn build(&self, input: &RecipeInput<'_>) -> Result<Vec<StepSpec>, String> {
        let mut steps = Vec::new();
        let mut prev: Option<String> = None;
        for a in vsphere_targets(input) {
            if !due(input, &a.id, "vsphere.machine_ssl") {
                continue;
            }
            let k = |s: &str| format!("{}-{s}", a.name);
            steps.push(gate(a, k("gate"), prev.clone(), &a.name));
            steps.push(StepSpec {
                key: k("machine-ssl"),
                name: "replace Machine SSL (VECS __MACHINE_CERT)".into(),
                stage: "replace".into(),
                target: a.name.clone(),
                agent: a.id.clone(),
                agent_name: a.name.clone(),
                action: "vsphere.machine_ssl".into(),
                args: json!({"restart": true}),
                depends_on: vec![k("gate")],
                commands: vec![
                    "/usr/lib/vmware-vmafd/bin/vmafd-cli get-pnid --server-name localhost".into(),
                    format!("{CERTOOL} --genkey --privkey=WORK/machine-ssl.key --pubkey=WORK/machine-ssl.pub --server=localhost"),
                    format!("{CERTOOL} --gencert --privkey=WORK/machine-ssl.key --cert=WORK/machine-ssl.crt --config=WORK/machine-ssl.cfg --server=localhost  (cfg: Country = US, Name = <PNID>, Organization = VMware, OrgUnit = VMware Engineering, State = California, Locality = Palo Alto, Hostname = <PNID>)"),
                    "openssl verify -CAfile /var/lib/vmware/vmca/root.cer WORK/machine-ssl.crt  (+ PNID in SAN, not expired)".into(),
                    format!("{VECS} entry getcert --store MACHINE_SSL_CERT --alias __MACHINE_CERT --output WORK/old.crt"),
                    format!("{VECS} entry getkey --store MACHINE_SSL_CERT --alias __MACHINE_CERT --output WORK/old.key"),
                    format!("{VECS} entry delete --store BACKUP_STORE --alias bkp___MACHINE_CERT -y  (if present)"),
                    format!("{VECS} entry create --store BACKUP_STORE --alias bkp___MACHINE_CERT --cert WORK/old.crt --key WORK/old.key"),
                    format!("{VECS} entry delete --store MACHINE_SSL_CERT --alias __MACHINE_CERT -y"),
                    format!("{VECS} entry create --store MACHINE_SSL_CERT --alias __MACHINE_CERT --cert WORK/machine-ssl.crt --key WORK/machine-ssl.key"),
                    format!("{VECS} entry getcert --store MACHINE_SSL_CERT --alias __MACHINE_CERT  (must be the new certificate)"),
                    RESTART_CMDS[0].into(),
                    RESTART_CMDS[1].into(),
                    RESTART_CMDS[2].into(),
                    RESTART_CMDS[3].into(),
                    "on any failure: entry delete/create the old certificate back, restart again".into(),
                ],
                files: vec![
                    "VECS MACHINE_SSL_CERT/__MACHINE_CERT".into(),
                    "VECS BACKUP_STORE/bkp___MACHINE_CERT".into(),
                    "STATE_DIR/vsphere/<step>/ (WORK)".into(),
                ],
                timeout_secs: 900,
            });
            prev = Some(k("machine-ssl"));
        }
        if steps.is_empty() {
            return Err(
                "nothing to renew: no vCenter's Machine SSL certificate is in scope".into(),
            );
        }
        Ok(steps)
    }
}

/// `vsphere-solution-users`.
pub struct SolutionUsers;

impl Recipe for SolutionUsers {
    fn name(&self) -> &'static str {
        "vsphere-solution-users"
    }

    fn about(&self) -> &'static str {
        "renew vCenter solution-user certificates (machine, vpxd, vpxd-extension, vsphere-webclient, hvc, wcp) node by node, restart and verify"
    }

    fn build(&self, input: &RecipeInput<'_>) -> Result<Vec<StepSpec>, String> {
        let mut steps = Vec::new();
        let mut prev: Option<String> = None;
        for a in vsphere_targets(input) {
            if !due(input, &a.id, "vsphere.solution_user.") {
                continue;
            }
            let k = |s: &str| format!("{}-{s}", a.name);
            steps.push(gate(a, k("gate"), prev.clone(), &a.name));
            let mut commands = vec![
                "/usr/lib/vmware-vmafd/bin/dir-cli service list --login administrator@<domain> --password ****  (every <user>-<MACHINE_ID> principal must exist)".to_owned(),
            ];
            for u in [
                "machine",
                "vsphere-webclient",
                "vpxd",
                "vpxd-extension",
                "hvc",
                "wcp",
            ] {
                commands.push(format!(
                    "{CERTOOL} --genkey --privkey=WORK/{u}.key --pubkey=WORK/{u}.pub --server=localhost"
                ));
                let (extra, fqdn) = if u == "wcp" {
                    (" --dataencipherment", String::new())
                } else {
                    ("", " --FQDN=<PNID>".to_owned())
                };
                commands.push(format!("{CERTOOL} --gencert --server=localhost --Name={u} --genCIScert{extra} --privkey=WORK/{u}.key --cert=WORK/{u}.crt --config=/dev/null --Country=US --State=California --Locality=\"Palo Alto\" --Organization=VMware --OrgUnit=mID-<MACHINE_ID>{fqdn}"));
                commands.push(format!("{VECS} entry getcert/getkey --store {u} --alias {u} --output WORK/old-{u}.crt|.key  (+ ldapsearch cn={u}-<MACHINE_ID>,cn=ServicePrincipals userCertificate > WORK/old-{u}.vmdir.crt)"));
            }
            let u = "<each user>";
            commands.push(format!("/usr/lib/vmware-vmafd/bin/dir-cli service update --name {u}-<MACHINE_ID> --cert WORK/{u}.crt --login administrator@<domain> --password ****  (vmdir first, §9.2)"));
            commands.push(format!("{VECS} entry delete --store {u} --alias {u} -y"));
            commands.push(format!(
                "{VECS} entry create --store {u} --alias {u} --cert WORK/{u}.crt --key WORK/{u}.key"
            ));
            commands.push(format!("ldapsearch cn={u}-<MACHINE_ID>,cn=ServicePrincipals userCertificate == {VECS} entry getcert --store {u} --alias {u} == WORK/{u}.crt"));
            commands.push("on any failure: dir-cli service update + vecs-cli entry delete/create the old certificates back for every user changed".into());
            steps.push(StepSpec {
                key: k("solution-users"),
                name: "replace solution-user certificates in vmdir, then VECS".into(),
                stage: "replace".into(),
                target: a.name.clone(),
                agent: a.id.clone(),
                agent_name: a.name.clone(),
                action: "vsphere.solution_users".into(),
                args: json!({}),
                depends_on: vec![k("gate")],
                commands,
                files: vec![
                    "vmdir cn=<user>-<MACHINE_ID>,cn=ServicePrincipals,<dn> userCertificate".into(),
                    "VECS machine, vsphere-webclient, vpxd, vpxd-extension, hvc, wcp stores (those present)".into(),
                ],
                timeout_secs: 900,
            });
            steps.push(restart(a, k("restart"), vec![k("solution-users")], &a.name));
            prev = Some(k("restart"));
        }
        if steps.is_empty() {
            return Err("nothing to renew: no solution-user certificate is in scope".into());
        }
        Ok(steps)
    }
}

/// `vsphere-sts`.
pub struct Sts;

impl Recipe for Sts {
    fn name(&self) -> &'static str {
        "vsphere-sts"
    }

    fn about(&self) -> &'static str {
        "replace the STS signing certificate once per SSO domain (fixsts.sh/vCert LDAP procedure), then restart every vCenter one at a time"
    }

    fn build(&self, input: &RecipeInput<'_>) -> Result<Vec<StepSpec>, String> {
        let nodes = vsphere_targets(input);
        if nodes.is_empty() {
            return Err("no vSphere agent among the targets".into());
        }
        // The node that runs the LDAP replacement: param `node`, else the first one reporting a
        // due STS signing certificate.
        let chosen = match input.params.get("node") {
            Some(n) => nodes
                .iter()
                .copied()
                .find(|a| &a.name == n)
                .ok_or_else(|| format!("node {n:?} is not among the vSphere targets"))?,
            None => nodes
                .iter()
                .copied()
                .find(|a| due(input, &a.id, "vsphere.sts_signing"))
                .ok_or("nothing to renew: no STS signing certificate is in scope")?,
        };
        let domain = input
            .params
            .get("domain")
            .cloned()
            .unwrap_or_else(|| "the SSO domain".into());
        let target = format!("sso:{domain}");
        let mut steps = Vec::new();
        let mut gates = Vec::new();
        for a in &nodes {
            let key = format!("{}-gate", a.name);
            steps.push(gate(a, key.clone(), None, &target));
            gates.push(key);
        }
        steps.push(StepSpec {
            key: "sts".into(),
            name: format!("replace the STS signing certificate of {domain} (once)"),
            stage: "replace".into(),
            target: target.clone(),
            agent: chosen.id.clone(),
            agent_name: chosen.name.clone(),
            action: "vsphere.sts".into(),
            args: json!({}),
            depends_on: gates,
            commands: vec![
                "/opt/likewise/bin/lwregshell list_values '[HKEY_THIS_MACHINE\\services\\vmdir]'  (dcAccountDN, dcAccountPassword)".into(),
                format!("{CERTOOL} --genkey --privkey=WORK/sts.key --pubkey=WORK/sts.pub --server=localhost"),
                format!("{CERTOOL} --gencert --cert=WORK/sts.cer --privkey=WORK/sts.key --config=WORK/certool.cfg --server=localhost  (cfg: Country = US, Name = ssoserverSign, Hostname = <PNID>)"),
                "/opt/likewise/bin/ldapsearch -o ldif-wrap=no -LLL -x -H <vsphere.ldap_uri> -b cn=<domain>,cn=Tenants,cn=IdentityManager,cn=Services,<dn> -D <dcAccountDN> -y WORK/machine-account.pw '(|(objectclass=vmwSTSTenantCredential)(objectclass=vmwSTSTenantTrustedCertificateChain))'  > WORK/sts-backup.ldif".into(),
                "/opt/likewise/bin/ldapmodify -x -H <vsphere.ldap_uri> -D <dcAccountDN> -y WORK/machine-account.pw -f WORK/sso-sts.ldif  (delete every TenantCredential-N/TrustedCertChain-N; add TenantCredential-1 [sts.der, VMCA chain, vmwSTSPrivateKey] and TrustedCertChain-1)".into(),
                "ldapsearch again: exactly one TenantCredential holding the new certificate (checksts)".into(),
                "on failure: ldapmodify the backup LDIF back".into(),
            ],
            files: vec![
                "vmdir cn=TenantCredential-N,cn=<domain>,cn=Tenants,cn=IdentityManager,cn=Services,<dn>".into(),
                "vmdir cn=TrustedCertChain-N,cn=TrustedCertificateChains,…".into(),
                "STATE_DIR/vsphere/<step>/ (WORK)".into(),
            ],
            timeout_secs: 600,
        });
        // Restart every node, the one that ran the fix first, one at a time.
        let mut order: Vec<&AgentRecord> = vec![chosen];
        order.extend(nodes.iter().copied().filter(|a| a.id != chosen.id));
        let mut prev = "sts".to_owned();
        for a in order {
            let key = format!("{}-restart", a.name);
            steps.push(restart(a, key.clone(), vec![prev], &target));
            prev = key;
        }
        Ok(steps)
    }
}

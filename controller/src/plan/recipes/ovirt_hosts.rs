//! oVirt host certificate recipes.
//!
//! `ovirt-hosts-offline` is the emergency path of reference A13/A14 step 5 and seed 003 (the
//! engine API is down, or the hosts' VDSM certificates already expired so "Enroll Certificate"
//! cannot reach them). Per host, one at a time (`--max-parallel`):
//!
//! 1. `csr.create` on the host from its existing key `/etc/pki/vdsm/keys/vdsmkey.pem` (the key
//!    never leaves the host), with the VDSM certificate's subject;
//! 2. `ovirt.enroll_request` on the engine agent: `pki-enroll-request.sh`'s exact `openssl ca`
//!    line in `/etc/pki/ovirt-engine` with `cert.conf` section `v3_ca_san` and the host's SAN
//!    (unlike the NAT role, so the engine accepts the certificate afterwards), validity
//!    `VdsCertificateValidityInDays` unless `--param days=N`; the engine's `database.txt`,
//!    `serial.txt` and `certs/<fqdn>.cer` record it as a normal enrollment;
//! 3. `cert.install` on the host to the VDSM certificate and its copies (A8: `vdsmcert.pem`,
//!    `libvirt-spice/server-cert.pem`, `libvirt-vnc/server-cert.pem`,
//!    `/etc/pki/libvirt/clientcert.pem`; mode 0644, owner kept — `root:kvm` as deployed), key
//!    check against `vdsmkey.pem`, restart `libvirtd` then `vdsmd` and require both active;
//!    a failure restores every file byte for byte and restarts the units again;
//! 4. the serial console's OpenSSH host certificate, as host-deploy's
//!    `ovirt-host-deploy-vm-console-certificates` role makes it (it expires with the VDSM
//!    certificate, so leaving it would break the serial console after a "successful"
//!    recovery): `ovirt.vmconsole_pubkey` on the host (`ssh-keygen -y` of
//!    `/etc/pki/ovirt-vmconsole/host-ssh_host_rsa`; the key never leaves the host);
//!    `ovirt.vmconsole_sign` on the engine agent, `pki-enroll-openssh-cert.sh --host
//!    --name=<fqdn>-ssh --id=<fqdn> --principals=<fqdn>`'s `ssh-keygen -s` with the engine CA
//!    key, for as many days as step 2 gave the VDSM certificate; `ovirt.vmconsole_install` on
//!    the host: `host-ssh_host_rsa-cert.pub` replaced after a backup (owner, group, mode
//!    kept), checked with `ssh-keygen -L` (key id, principals, the host key, signed by the
//!    engine CA key the host's `ca.pub` holds, valid later than before),
//!    `ovirt-vmconsole-host-sshd` restarted and required active; a failure restores the file
//!    byte for byte. A host without a vmconsole certificate in the inventory (serial console
//!    not deployed), or a `--role` that leaves out `ovirt.node.vmconsole`, gets no such
//!    steps, and its VDSM install step says why.
//!
//! Targets: agents whose `ovirt.node.vdsm` certificate at `/etc/pki/vdsm/certs/vdsmcert.pem`
//! is in scope (`--expiring-within`, `--role`). The engine agent is the one holding the engine
//! CA (`ovirt.engine.ca`) that issued the host's certificate.
//!
//! After the engine is back, a proper "Enroll Certificate" (recipe `ovirt-hosts`) also
//! refreshes the QEMU and OVN certificates, which this path leaves, and re-issues the
//! engine's X.509 twin of the vmconsole key (`certs/<fqdn>-ssh.cer`), which only
//! `pki-enroll-openssh-cert.sh` reads.
//!
//! `ovirt-hosts` is the normal path (engine up, A10/A11, A14 step 4, with the power-management
//! lesson of A13): per cluster, one host after the other, all API steps on the engine agent
//! (settings `ovirt.api_url`, `ovirt.api_user`, `ovirt.api_password_file`):
//!
//! 0. once per engine, `ovirt.engine_version` (`GET /ovirt-engine/api` `product_info`): the
//!    path for a host that is already NonResponsive (expired VDSM certificate) depends on it.
//!    Engines from 4.5.1 enroll a NonResponsive host directly (`HostValidator`
//!    `validateStatusForEnrollCertificate`, `ovirt-engine-4.5.1`); older ones need maintenance,
//!    which they refuse for a NonResponsive host with running VMs
//!    (`VDS_CANNOT_MAINTENANCE_VDS_IS_NOT_RESPONDING_WITH_VMS`), so there the plan stops with
//!    that message and points to `ovirt-hosts-offline`;
//! 1. `ovirt.power_management enabled=false` (so the engine does not fence a host whose vdsmd
//!    restarts); its result keeps the previous setting;
//! 2. `ovirt.host_maintenance` (VMs migrate away; waits for `maintenance`; skipped for a
//!    NonResponsive host when step 0 allows direct enrollment);
//! 3. `ovirt.enroll_certificate` (waits for the enrollment, not the stale status);
//! 4. `ovirt.host_activate` (waits for `up`);
//! 5. `ovirt.verify_host_certs` on the host's own agent: a new VDSM certificate, valid, later
//!    than before, matching the key, chaining to the host's `cacert.pem`, copies identical;
//!    the serial console's host certificate (`/etc/pki/ovirt-vmconsole/host-ssh_host_rsa-cert.pub`,
//!    re-issued by the playbook's vm-console role) valid and later than before;
//! 6. `ovirt.power_management` back to the previous setting.
//!
//! A host is a target when its VDSM certificate or its vmconsole certificate is in scope.
//!
//! Hosts of one cluster (agent label `ovirt.cluster`, default `Default`) are chained: the next
//! host starts only after the previous one finished step 6, so a failure halts the cluster with
//! the failed host where the failure left it (in maintenance, power management off — a
//! host the engine cannot fence until an operator looks). Clusters run side by side, as
//! `--max-parallel` allows.

use serde_json::json;

use super::{Recipe, RecipeInput, StepSpec, openssl_subject};
use crate::plan::Target;
use certfleet_common::model::CertRecord;

/// The VDSM certificate on a host.
pub const VDSM_CERT: &str = "/etc/pki/vdsm/certs/vdsmcert.pem";
/// The VDSM key on a host.
pub const VDSM_KEY: &str = "/etc/pki/vdsm/keys/vdsmkey.pem";
/// Where the VDSM certificate is copied (A8), after `vdsmcert.pem` itself.
pub const VDSM_COPIES: &[&str] = &[
    "/etc/pki/vdsm/libvirt-spice/server-cert.pem",
    "/etc/pki/vdsm/libvirt-vnc/server-cert.pem",
    "/etc/pki/libvirt/clientcert.pem",
];
/// Keys the engine's Enroll Certificate rewrites next to the certificates (A9).
pub const ENROLLED_KEYS: &[&str] = &[
    "/etc/pki/vdsm/libvirt-spice/server-key.pem",
    "/etc/pki/vdsm/libvirt-vnc/server-key.pem",
    "/etc/pki/libvirt/private/clientkey.pem",
];
/// Units restarted after the new certificate is in place (seed 003, A13), in this order.
pub const UNITS: &[&str] = &["libvirtd", "vdsmd"];

/// `ovirt-hosts-offline`.
pub struct OvirtHostsOffline;

/// A host to renew and the engine that signs for it.
pub(crate) struct HostJob<'a> {
    pub host: &'a Target,
    pub cert: &'a CertRecord,
    pub engine: &'a Target,
    pub fqdn: String,
    pub san: String,
}

/// The serial console's host certificate (OpenSSH), re-issued by Enroll Certificate.
pub const VMCONSOLE_CERT: &str = "/etc/pki/ovirt-vmconsole/host-ssh_host_rsa-cert.pub";
/// The serial console's host key, which that certificate certifies.
pub const VMCONSOLE_KEY: &str = "/etc/pki/ovirt-vmconsole/host-ssh_host_rsa";
/// The unit host-deploy restarts after installing [`VMCONSOLE_CERT`].
pub const VMCONSOLE_UNIT: &str = "ovirt-vmconsole-host-sshd";

/// Hosts whose VDSM certificate (or, `with_vmconsole`, serial console certificate) is in
/// scope, each with its engine agent.
pub(crate) fn host_jobs<'a>(
    input: &'a RecipeInput<'a>,
    with_vmconsole: bool,
) -> (Vec<HostJob<'a>>, Vec<String>) {
    let mut jobs = Vec::new();
    let mut problems = Vec::new();
    for host in &input.targets {
        let Some(cert) = input.cert_at(&host.id, VDSM_CERT) else {
            if host.platforms.iter().any(|p| p == "ovirt_node") {
                problems.push(format!(
                    "{}: {VDSM_CERT} is not in the inventory (rescan?)",
                    host.name
                ));
            }
            continue;
        };
        let wanted = |c: &CertRecord| {
            input.due(c.not_after)
                && (input.roles.is_empty()
                    || input.roles.iter().any(|r| c.role.starts_with(r.as_str())))
        };
        let vmconsole_due = with_vmconsole
            && input
                .cert_at(&host.id, VMCONSOLE_CERT)
                .is_some_and(|c| c.role == "ovirt.node.vmconsole" && wanted(c));
        if cert.role != "ovirt.node.vdsm" || !(wanted(cert) || vmconsole_due) {
            continue;
        }
        let engine = input.agents.iter().copied().find(|a| {
            input.inventory.get(&a.id).is_some_and(|certs| {
                certs
                    .iter()
                    .any(|c| c.role == "ovirt.engine.ca" && c.subject == cert.issuer)
            })
        });
        let Some(engine) = engine else {
            problems.push(format!(
                "{}: no connected agent holds the engine CA {:?} that issued {VDSM_CERT}",
                host.name, cert.issuer
            ));
            continue;
        };
        let Some(fqdn) = cert
            .subject
            .split(", ")
            .find_map(|p| p.strip_prefix("CN="))
            .map(str::to_owned)
        else {
            problems.push(format!(
                "{}: {VDSM_CERT} has no CN ({})",
                host.name, cert.subject
            ));
            continue;
        };
        let sans: Vec<&str> = cert
            .sans
            .iter()
            .filter(|s| s.starts_with("DNS:") || s.starts_with("IP:"))
            .map(String::as_str)
            .collect();
        let san = if sans.is_empty() {
            format!("DNS:{fqdn}")
        } else {
            sans.join(",")
        };
        jobs.push(HostJob {
            host,
            cert,
            engine,
            fqdn,
            san,
        });
    }
    (jobs, problems)
}

impl Recipe for OvirtHostsOffline {
    fn name(&self) -> &'static str {
        "ovirt-hosts-offline"
    }

    fn about(&self) -> &'static str {
        "oVirt hosts without the engine API: CSR from vdsmkey.pem, engine openssl ca, install, restart libvirtd+vdsmd"
    }

    fn build(&self, input: &RecipeInput<'_>) -> Result<Vec<StepSpec>, String> {
        let (jobs, problems) = host_jobs(input, false);
        if jobs.is_empty() {
            return Err(super::nothing_in_scope(
                "no oVirt host VDSM certificate is in scope",
                &problems,
            ));
        }
        let days: Option<u64> = input
            .params
            .contains_key("days")
            .then(|| input.param("days", 0))
            .transpose()?;
        let mut steps = Vec::new();
        for j in &jobs {
            let h = j.host;
            let target = format!("{}:{VDSM_CERT}", h.name);
            let k = |s: &str| format!("{}-vdsm-{s}", h.name);
            let subject = openssl_subject(&j.cert.subject);
            steps.push(StepSpec {
                key: k("csr"),
                name: format!("CSR for {} from {VDSM_KEY}", j.fqdn),
                stage: "csr".into(),
                target: target.clone(),
                agent: h.id.clone(),
                agent_name: h.name.clone(),
                action: "csr.create".into(),
                args: json!({"key": VDSM_KEY, "subject": subject}),
                depends_on: vec![],
                commands: vec![format!(
                    "openssl req -new -key {VDSM_KEY} -subj '{subject}'"
                )],
                files: vec![VDSM_KEY.into()],
                timeout_secs: 60,
            });
            steps.push(sign_step(j, days, &k("sign"), &k("csr"), "csr_pem", 120));
            let mut files = vec![VDSM_CERT.to_owned()];
            files.extend(VDSM_COPIES.iter().map(|s| s.to_string()));
            let targets: Vec<_> = files
                .iter()
                .map(|p| json!({"path": p, "mode": "0644"}))
                .collect();
            let mut commands = vec![format!("back up and replace {}", files.join(", "))];
            commands.push(format!("check {VDSM_CERT} matches {VDSM_KEY}"));
            commands.extend(
                UNITS
                    .iter()
                    .map(|u| format!("systemctl restart {u} && systemctl is-active {u}")),
            );
            let vmconsole = vmconsole_scope(input, h);
            if let Err(why) = &vmconsole {
                commands.push(format!("# serial console certificate not renewed: {why}"));
            }
            steps.push(StepSpec {
                key: k("install"),
                name: format!("install the VDSM certificate of {}", j.fqdn),
                stage: "install".into(),
                target,
                agent: h.id.clone(),
                agent_name: h.name.clone(),
                action: "cert.install".into(),
                args: json!({
                    "cert_pem": {"$ref": format!("{}.cert_pem", k("sign"))},
                    "targets": targets,
                    "key": VDSM_KEY,
                    "restart": UNITS,
                }),
                depends_on: vec![k("sign")],
                commands,
                files,
                timeout_secs: 300,
            });
            if let Ok(old) = vmconsole {
                steps.extend(vmconsole_steps(j, old, &k("install"), &k("sign")));
            }
        }
        Ok(steps)
    }
}

/// The step that signs a host's CSR on its engine: `ovirt.enroll_request`, with the CSR taken
/// from field `csr_field` of step `csr_key`'s result (`days`: `None` = the engine's
/// `VdsCertificateValidityInDays`). Shared by `ovirt-hosts-offline` and `ovirt-hosted-engine`.
pub(crate) fn sign_step(
    j: &HostJob<'_>,
    days: Option<u64>,
    key: &str,
    csr_key: &str,
    csr_field: &str,
    timeout_secs: u32,
) -> StepSpec {
    let subject = openssl_subject(&j.cert.subject);
    let mut sign = json!({
        "name": j.fqdn,
        "subject": subject,
        "san": j.san,
        "ca": "ca",
        "csr_pem": {"$ref": format!("{csr_key}.{csr_field}")},
    });
    if let Some(d) = days {
        sign["days"] = json!(d);
    }
    StepSpec {
        key: key.to_owned(),
        name: format!("engine CA signs {}", j.fqdn),
        stage: "sign".into(),
        target: format!("{}:{VDSM_CERT}", j.host.name),
        agent: j.engine.id.clone(),
        agent_name: j.engine.name.clone(),
        action: "ovirt.enroll_request".into(),
        args: sign,
        depends_on: vec![csr_key.to_owned()],
        commands: vec![format!(
            "(cd /etc/pki/ovirt-engine) OVIRT_SAN={} openssl ca -batch -policy policy_match -config openssl.conf -cert ca.pem -keyfile private/ca.pem -days {} -in requests/{f}.req -out certs/{f}.cer -startdate <yesterday> -subj '{subject}' -utf8 -extfile cert.conf -extensions v3_ca_san",
            j.san,
            days.map(|d| d.to_string())
                .unwrap_or_else(|| "<VdsCertificateValidityInDays>".into()),
            f = j.fqdn,
        )],
        files: vec![
            format!("/etc/pki/ovirt-engine/requests/{}.req", j.fqdn),
            format!("/etc/pki/ovirt-engine/certs/{}.cer", j.fqdn),
            "/etc/pki/ovirt-engine/database.txt".into(),
            "/etc/pki/ovirt-engine/serial.txt".into(),
        ],
        timeout_secs,
    }
}

/// The host's serial console certificate as the inventory has it, or why the offline recipe
/// leaves it alone.
fn vmconsole_scope<'a>(
    input: &'a RecipeInput<'a>,
    host: &Target,
) -> Result<&'a CertRecord, String> {
    let Some(c) = input
        .cert_at(&host.id, VMCONSOLE_CERT)
        .filter(|c| c.role == "ovirt.node.vmconsole")
    else {
        return Err(format!(
            "no {VMCONSOLE_CERT} in this host's inventory (ovirt-vmconsole-host not deployed)"
        ));
    };
    if !input.roles.is_empty()
        && !input
            .roles
            .iter()
            .any(|r| "ovirt.node.vmconsole".starts_with(r.as_str()))
    {
        return Err(format!(
            "--role {} leaves out ovirt.node.vmconsole",
            input.roles.join(",")
        ));
    }
    Ok(c)
}

/// Step 4 of the module doc for one host: after its VDSM certificate is installed
/// (`after`), the serial console certificate for as many days as `vdsm_sign` gave.
fn vmconsole_steps(
    j: &HostJob<'_>,
    old: &CertRecord,
    after: &str,
    vdsm_sign: &str,
) -> Vec<StepSpec> {
    let h = j.host;
    let f = &j.fqdn;
    let target = format!("{}:{VMCONSOLE_CERT}", h.name);
    let k = |s: &str| format!("{}-vmconsole-{s}", h.name);
    let name = format!("{f}-ssh");
    vec![
        StepSpec {
            key: k("pubkey"),
            name: format!("public key of the serial console host key of {f}"),
            stage: "csr".into(),
            target: target.clone(),
            agent: h.id.clone(),
            agent_name: h.name.clone(),
            action: "ovirt.vmconsole_pubkey".into(),
            args: json!({"key": VMCONSOLE_KEY}),
            depends_on: vec![after.to_owned()],
            commands: vec![format!("ssh-keygen -y -f {VMCONSOLE_KEY}")],
            files: vec![VMCONSOLE_KEY.into()],
            timeout_secs: 60,
        },
        StepSpec {
            key: k("sign"),
            name: format!("engine CA signs the serial console host key of {f}"),
            stage: "sign".into(),
            target: target.clone(),
            agent: j.engine.id.clone(),
            agent_name: j.engine.name.clone(),
            action: "ovirt.vmconsole_sign".into(),
            args: json!({
                "name": name,
                "id": f,
                "principals": f,
                "public_key": {"$ref": format!("{}.public_key", k("pubkey"))},
                "days": {"$ref": format!("{vdsm_sign}.days")},
            }),
            depends_on: vec![k("pubkey")],
            commands: vec![format!(
                "(cd /etc/pki/ovirt-engine) ssh-keygen -s <copy of private/ca.pem> -I {f} -h -V -1h:+<days>d -n {f} certs/{name}.pub"
            )],
            files: vec![
                format!("/etc/pki/ovirt-engine/certs/{name}.pub"),
                format!("/etc/pki/ovirt-engine/certs/{name}-cert.pub"),
            ],
            timeout_secs: 120,
        },
        StepSpec {
            key: k("install"),
            name: format!("install the serial console host certificate of {f}"),
            stage: "install".into(),
            target,
            agent: h.id.clone(),
            agent_name: h.name.clone(),
            action: "ovirt.vmconsole_install".into(),
            args: json!({
                "cert_text": {"$ref": format!("{}.cert_text", k("sign"))},
                "ca_fingerprint": {"$ref": format!("{}.ca_fingerprint", k("sign"))},
                "key_id": f,
                "principals": [f],
                "path": VMCONSOLE_CERT,
                "key": VMCONSOLE_KEY,
                "old_valid_before": old.not_after,
                "restart": [VMCONSOLE_UNIT],
            }),
            depends_on: vec![k("sign")],
            commands: vec![
                format!("back up and replace {VMCONSOLE_CERT}"),
                format!("ssh-keygen -L -f {VMCONSOLE_CERT}"),
                format!(
                    "systemctl restart {VMCONSOLE_UNIT} && systemctl is-active {VMCONSOLE_UNIT}"
                ),
            ],
            files: vec![VMCONSOLE_CERT.into()],
            timeout_secs: 300,
        },
    ]
}

/// `ovirt-hosts`.
pub struct OvirtHosts;

impl Recipe for OvirtHosts {
    fn name(&self) -> &'static str {
        "ovirt-hosts"
    }

    fn about(&self) -> &'static str {
        "oVirt hosts via the engine API: PM off, maintenance, Enroll Certificate, activate, verify, PM back"
    }

    fn build(&self, input: &RecipeInput<'_>) -> Result<Vec<StepSpec>, String> {
        let (jobs, problems) = host_jobs(input, true);
        if jobs.is_empty() {
            return Err(super::nothing_in_scope(
                "no oVirt host VDSM or vmconsole certificate is in scope",
                &problems,
            ));
        }
        let mut steps = Vec::new();
        // Last step key of each cluster's chain.
        let mut tail: std::collections::BTreeMap<String, String> = Default::default();
        // One version probe per engine agent.
        let mut probed: Vec<&str> = Vec::new();
        let version_key = |engine: &Target| format!("{}-engine-version", engine.name);
        for j in &jobs {
            if probed.contains(&j.engine.id.as_str()) {
                continue;
            }
            probed.push(&j.engine.id);
            steps.push(StepSpec {
                key: version_key(j.engine),
                name: format!("engine version of {}", j.engine.name),
                stage: "version".into(),
                target: format!("{}:/ovirt-engine/api", j.engine.name),
                agent: j.engine.id.clone(),
                agent_name: j.engine.name.clone(),
                action: "ovirt.engine_version".into(),
                args: json!({}),
                depends_on: vec![],
                commands: vec!["GET /ovirt-engine/api (product_info.version)".into()],
                files: vec![],
                timeout_secs: 60,
            });
        }
        for j in &jobs {
            let direct =
                json!({"$ref": format!("{}.enroll_non_responsive", version_key(j.engine))});
            let h = j.host;
            let cluster = h
                .labels
                .get("ovirt.cluster")
                .cloned()
                .unwrap_or_else(|| "Default".into());
            let target = format!("{}:{VDSM_CERT}", h.name);
            let k = |s: &str| format!("{}-enroll-{s}", h.name);
            let api = |key: &str,
                       name: String,
                       action: &str,
                       args: serde_json::Value,
                       dep: Vec<String>,
                       cmd: String,
                       secs: u32| StepSpec {
                key: k(key),
                name,
                stage: key.into(),
                target: target.clone(),
                agent: j.engine.id.clone(),
                agent_name: j.engine.name.clone(),
                action: action.into(),
                args,
                depends_on: dep,
                commands: vec![cmd],
                files: vec![],
                timeout_secs: secs,
            };
            let first_dep: Vec<String> = tail.get(&cluster).cloned().into_iter().collect();
            let f = &j.fqdn;
            // The engine replaces these on the host; a copy on the host makes the enrollment
            // undoable by `plan rollback`.
            let enrolled: Vec<&str> = std::iter::once(VDSM_CERT)
                .chain(std::iter::once(VDSM_KEY))
                .chain(VDSM_COPIES.iter().copied())
                .chain(ENROLLED_KEYS.iter().copied())
                .chain(std::iter::once("/etc/pki/vdsm/certs/cacert.pem"))
                .collect();
            steps.push(StepSpec {
                key: k("backup"),
                name: format!("back up the VDSM certificate and keys of {f}"),
                stage: "backup".into(),
                target: target.clone(),
                agent: h.id.clone(),
                agent_name: h.name.clone(),
                action: "files.backup".into(),
                args: json!({"paths": enrolled, "restart": UNITS}),
                depends_on: first_dep,
                commands: vec![format!(
                    "certfleet-agent backup of {} files",
                    enrolled.len()
                )],
                files: enrolled.iter().map(|s| s.to_string()).collect(),
                timeout_secs: 60,
            });
            steps.push(api(
                "pm-off",
                format!("disable power management of {f}"),
                "ovirt.power_management",
                json!({"host": f, "enabled": false}),
                vec![k("backup"), version_key(j.engine)],
                format!("PUT /ovirt-engine/api/hosts/<id of {f}> <power_management><enabled>false</enabled></power_management>"),
                120,
            ));
            steps.push(api(
                "maintenance",
                format!("{f} to maintenance"),
                "ovirt.host_maintenance",
                json!({"host": f, "enroll_non_responsive": direct}),
                vec![k("pm-off")],
                format!(
                    "POST /ovirt-engine/api/hosts/<id of {f}>/deactivate; poll until maintenance"
                ),
                1800,
            ));
            steps.push(api(
                "enroll",
                format!("Enroll Certificate of {f}"),
                "ovirt.enroll_certificate",
                json!({"host": f, "enroll_non_responsive": direct}),
                vec![k("maintenance")],
                format!("POST /ovirt-engine/api/hosts/<id of {f}>/enrollcertificate; wait for event 881 / installing → maintenance"),
                900,
            ));
            steps.push(api(
                "activate",
                format!("activate {f}"),
                "ovirt.host_activate",
                json!({"host": f}),
                vec![k("enroll")],
                format!("POST /ovirt-engine/api/hosts/<id of {f}>/activate; poll until up"),
                900,
            ));
            let mut files = vec![VDSM_CERT.to_owned()];
            files.extend(VDSM_COPIES.iter().map(|s| s.to_string()));
            steps.push(StepSpec {
                key: k("verify"),
                name: format!("verify the new VDSM certificate on {f}"),
                stage: "verify".into(),
                target: target.clone(),
                agent: h.id.clone(),
                agent_name: h.name.clone(),
                action: "ovirt.verify_host_certs".into(),
                args: json!({
                    "old_fingerprint": j.cert.fingerprint_sha256,
                    "old_not_after": j.cert.not_after,
                    "old_vmconsole_not_after": input
                        .cert_at(&h.id, VMCONSOLE_CERT)
                        .map(|c| c.not_after),
                }),
                depends_on: vec![k("activate")],
                commands: vec![
                    format!("openssl verify -CAfile /etc/pki/vdsm/certs/cacert.pem {VDSM_CERT}"),
                    format!("compare {VDSM_CERT} with {VDSM_KEY} and its copies"),
                ],
                files,
                timeout_secs: 120,
            });
            steps.push(api(
                "pm-restore",
                format!("restore power management of {f}"),
                "ovirt.power_management",
                json!({"host": f, "enabled": {"$ref": format!("{}.previous", k("pm-off"))}}),
                vec![k("verify")],
                format!("PUT /ovirt-engine/api/hosts/<id of {f}> <power_management><enabled>(as before)</enabled></power_management>"),
                120,
            ));
            tail.insert(cluster, k("pm-restore"));
        }
        Ok(steps)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn agent(id: &str, platform: &str) -> Target {
        serde_json::from_value(json!({
            "id": id, "name": id, "hostname": id, "platforms": [platform], "version": "0",
            "state": "active", "enrolled_at": 0, "last_seen": 0, "cert_not_after": 0,
            "cert_fingerprint": "", "key_id": "", "labels": {},
        }))
        .unwrap()
    }

    use super::super::test_cert as cert;

    #[test]
    fn plans_due_hosts_signed_by_their_engine_only() {
        let ca = "C=US, O=example.test, CN=engine.example.test.12345";
        let (engine, h1, h2, h3) = (
            agent("engine", "ovirt_engine"),
            agent("kvm01", "ovirt_node"),
            agent("kvm02", "ovirt_node"),
            agent("kvm03", "ovirt_node"),
        );
        let mut inventory = BTreeMap::new();
        inventory.insert(
            "engine".to_owned(),
            vec![
                cert(
                    "ovirt.engine.ca",
                    ca,
                    ca,
                    "/etc/pki/ovirt-engine/ca.pem",
                    7000,
                ),
                // The engine's record of a host certificate is not a target.
                cert(
                    "ovirt.node.vdsm",
                    "O=example.test, CN=kvm01.example.test",
                    ca,
                    "/etc/pki/ovirt-engine/certs/kvm01.example.test.cer",
                    5,
                ),
            ],
        );
        let h = |n: &str, issuer: &str, days| {
            vec![cert(
                "ovirt.node.vdsm",
                &format!("O=example.test, CN={n}.example.test"),
                issuer,
                VDSM_CERT,
                days,
            )]
        };
        inventory.insert("kvm01".into(), h("kvm01", ca, -2));
        inventory.insert("kvm02".into(), h("kvm02", ca, 1500));
        inventory.insert("kvm03".into(), h("kvm03", "CN=elsewhere", 3));
        let all = vec![&engine, &h1, &h2, &h3];
        let input = RecipeInput::for_test(all, inventory);
        let (jobs, problems) = host_jobs(&input, false);
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].host.name, "kvm01");
        assert_eq!(jobs[0].engine.name, "engine");
        assert_eq!(jobs[0].san, "DNS:kvm01.example.test");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("kvm03"));
        let steps = OvirtHostsOffline.build(&input).unwrap();
        let actions: Vec<&str> = steps.iter().map(|s| s.action.as_str()).collect();
        assert_eq!(
            actions,
            ["csr.create", "ovirt.enroll_request", "cert.install"]
        );
        assert_eq!(steps[1].agent, "engine");
        assert_eq!(
            steps[1].args["subject"],
            "/O=example.test/CN=kvm01.example.test"
        );
        assert_eq!(steps[2].args["targets"].as_array().unwrap().len(), 4);
        assert_eq!(steps[2].args["restart"], json!(["libvirtd", "vdsmd"]));
    }

    #[test]
    fn offline_recipe_renews_the_serial_console_certificate_where_deployed() {
        let ca = "C=US, O=example.test, CN=engine.example.test.12345";
        let (engine, h1, h2) = (
            agent("engine", "ovirt_engine"),
            agent("kvm01", "ovirt_node"),
            agent("kvm02", "ovirt_node"),
        );
        let mut inventory = BTreeMap::new();
        inventory.insert(
            "engine".to_owned(),
            vec![cert(
                "ovirt.engine.ca",
                ca,
                ca,
                "/etc/pki/ovirt-engine/ca.pem",
                7000,
            )],
        );
        let vdsm = |n: &str| {
            cert(
                "ovirt.node.vdsm",
                &format!("O=example.test, CN={n}.example.test"),
                ca,
                VDSM_CERT,
                5,
            )
        };
        // kvm01 has the serial console deployed; kvm02 has not.
        let console = cert(
            "ovirt.node.vmconsole",
            "OpenSSH host certificate, key id kvm01.example.test",
            "OpenSSH CA SHA256:x",
            VMCONSOLE_CERT,
            5,
        );
        inventory.insert("kvm01".into(), vec![vdsm("kvm01"), console.clone()]);
        inventory.insert("kvm02".into(), vec![vdsm("kvm02")]);
        let all = vec![&engine, &h1, &h2];
        let mut input = RecipeInput::for_test(all, inventory);
        let steps = OvirtHostsOffline.build(&input).unwrap();
        let actions: Vec<(&str, &str)> = steps
            .iter()
            .map(|s| (s.agent.as_str(), s.action.as_str()))
            .collect();
        assert_eq!(
            actions,
            [
                ("kvm01", "csr.create"),
                ("engine", "ovirt.enroll_request"),
                ("kvm01", "cert.install"),
                ("kvm01", "ovirt.vmconsole_pubkey"),
                ("engine", "ovirt.vmconsole_sign"),
                ("kvm01", "ovirt.vmconsole_install"),
                ("kvm02", "csr.create"),
                ("engine", "ovirt.enroll_request"),
                ("kvm02", "cert.install"),
            ]
        );
        // After the VDSM part, chained, with the VDSM certificate's days.
        assert_eq!(steps[3].depends_on, vec![steps[2].key.clone()]);
        assert_eq!(steps[4].depends_on, vec![steps[3].key.clone()]);
        assert_eq!(steps[5].depends_on, vec![steps[4].key.clone()]);
        let sign = &steps[4].args;
        assert_eq!(sign["name"], "kvm01.example.test-ssh");
        assert_eq!(sign["id"], "kvm01.example.test");
        assert_eq!(sign["principals"], "kvm01.example.test");
        assert_eq!(sign["days"]["$ref"], format!("{}.days", steps[1].key));
        assert_eq!(
            sign["public_key"]["$ref"],
            format!("{}.public_key", steps[3].key)
        );
        let install = &steps[5].args;
        assert_eq!(install["old_valid_before"], console.not_after);
        assert_eq!(install["restart"], json!([VMCONSOLE_UNIT]));
        assert_eq!(install["principals"], json!(["kvm01.example.test"]));
        // kvm02's plan says why its serial console is left alone.
        assert!(
            steps[8]
                .commands
                .iter()
                .any(|c| c.contains("not renewed") && c.contains("not deployed")),
            "{:?}",
            steps[8].commands
        );
        assert!(!steps[2].commands.iter().any(|c| c.contains("not renewed")));
        // A --role that leaves out the serial console leaves it out, and says so.
        input.roles = vec!["ovirt.node.vdsm".into()];
        let steps = OvirtHostsOffline.build(&input).unwrap();
        assert_eq!(steps.len(), 6);
        assert!(steps[2].commands.iter().any(|c| c.contains("--role")));
        input.roles = vec!["ovirt.node".into()];
        assert_eq!(OvirtHostsOffline.build(&input).unwrap().len(), 9);
    }

    #[test]
    fn api_recipe_chains_hosts_of_a_cluster() {
        let ca = "C=US, O=example.test, CN=engine.example.test.12345";
        let engine = agent("engine", "ovirt_engine");
        let hosts: Vec<Target> = ["kvm01", "kvm02"]
            .iter()
            .map(|n| agent(n, "ovirt_node"))
            .collect();
        let mut inventory = BTreeMap::new();
        inventory.insert(
            "engine".to_owned(),
            vec![cert(
                "ovirt.engine.ca",
                ca,
                ca,
                "/etc/pki/ovirt-engine/ca.pem",
                7000,
            )],
        );
        for h in &hosts {
            inventory.insert(
                h.id.clone(),
                vec![cert(
                    "ovirt.node.vdsm",
                    &format!("O=example.test, CN={}.example.test", h.name),
                    ca,
                    VDSM_CERT,
                    10,
                )],
            );
        }
        let mut all = vec![&engine];
        all.extend(hosts.iter());
        let input = RecipeInput::for_test(all, inventory);
        let mut steps = OvirtHosts.build(&input).unwrap();
        // One engine version probe first; the API steps of each host wait for it.
        let probe = steps.remove(0);
        assert_eq!(probe.action, "ovirt.engine_version");
        assert_eq!(probe.agent, "engine");
        assert!(steps[1].depends_on.contains(&probe.key));
        assert_eq!(
            steps[2].args["enroll_non_responsive"]["$ref"],
            "engine-engine-version.enroll_non_responsive"
        );
        assert_eq!(
            steps[3].args["enroll_non_responsive"],
            steps[2].args["enroll_non_responsive"]
        );
        let actions: Vec<&str> = steps.iter().take(7).map(|s| s.action.as_str()).collect();
        assert_eq!(
            actions,
            [
                "files.backup",
                "ovirt.power_management",
                "ovirt.host_maintenance",
                "ovirt.enroll_certificate",
                "ovirt.host_activate",
                "ovirt.verify_host_certs",
                "ovirt.power_management"
            ]
        );
        assert_eq!(steps.len(), 14);
        assert_eq!(steps[0].agent, "kvm01");
        assert_eq!(steps[5].agent, "kvm01");
        assert_eq!(steps[1].agent, "engine");
        assert_eq!(
            steps[6].args["enabled"]["$ref"],
            "kvm01-enroll-pm-off.previous"
        );
        // The second host waits for the first one's last step.
        assert_eq!(
            steps[7].depends_on,
            vec!["kvm01-enroll-pm-restore".to_owned()]
        );
        assert_eq!(steps[8].args["host"], "kvm02.example.test");
    }
}

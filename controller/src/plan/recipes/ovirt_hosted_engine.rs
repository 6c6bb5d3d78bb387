//! `ovirt-hosted-engine`: the self-hosted engine VM is down because libvirtd on its host refuses
//! the expired VDSM certificate (reference A12, seed 003 "HostedEngine unavailable"), so there
//! is no engine to sign a new one until the VM runs again. The agent-local halves
//! (`agent/src/recover/hosted_engine.rs`) do the work; this recipe chains them through the
//! controller, one hosted-engine host (`--agent`) per plan:
//!
//! 1. `ovirt.hosted_engine_start` on the host: the VM brought up with the expired certificate
//!    (`--param way=dropin`, the default: libvirtd without its TLS listener from `/run`
//!    drop-ins; `way=clock`: the host clock set back inside the certificate's validity and
//!    restored), then a CSR from the host's own `vdsmkey.pem`, which comes back in the step's
//!    result (the key never leaves the host);
//! 2. `ovirt.enroll_request` on the engine agent (the agent holding the engine CA that issued
//!    the host's certificate, found in the inventory even while it is disconnected): the same
//!    `openssl ca` with the host's SAN as `ovirt-hosts-offline`. That agent runs in the engine
//!    VM, so it connects only once step 1 brought the VM up: the step waits for it (the
//!    controller sends a step when its agent connects). Its timeout covers that wait
//!    (`--param engine_wait=SECONDS`, default 900) plus the signing, because the controller
//!    counts a step's time from its dispatch; `certfleet recover ovirt-hosted-engine` bounds
//!    the same wait and aborts the plan naming the engine agent when it does not come;
//! 3. `ovirt.hosted_engine_finish` on the host: the signed certificate checked against the
//!    host, the drop-ins removed, installed with backups at every VDSM path, libvirtd
//!    restarted with its TLS listener and vdsmd, verified (the drop-ins put back if that
//!    fails, so the VM's host keeps running).
//!
//! Targets: the named agents whose `ovirt.node.vdsm` certificate is in scope (`--expiring-within`
//! 1s from the CLI: expired); exactly one, since the HostedEngine VM runs on one host.

use serde_json::json;

use super::ovirt_hosts::{VDSM_CERT, VDSM_COPIES, VDSM_KEY, host_jobs, sign_step};
use super::{Recipe, RecipeInput, StepSpec};

/// The drop-ins of the `dropin` way (as `agent/src/recover/hosted_engine.rs` writes them).
const DROPINS: &[&str] = &[
    "/run/systemd/system/libvirtd.service.d/50-certfleet-recover-no-tls.conf",
    "/run/systemd/system/libvirtd-tls.socket.d/50-certfleet-recover-no-tls.conf",
];

/// Default wait for the engine VM's agent after the VM is up, seconds.
pub const ENGINE_WAIT_SECS: u64 = 900;

/// `ovirt-hosted-engine`.
pub struct OvirtHostedEngine;

impl Recipe for OvirtHostedEngine {
    fn name(&self) -> &'static str {
        "ovirt-hosted-engine"
    }

    fn about(&self) -> &'static str {
        "oVirt hosted-engine host whose expired VDSM certificate keeps the engine VM down: VM up without TLS (or clock back), CSR signed on the engine, installed"
    }

    fn build(&self, input: &RecipeInput<'_>) -> Result<Vec<StepSpec>, String> {
        let way = input
            .params
            .get("way")
            .map(String::as_str)
            .unwrap_or("dropin");
        if !["dropin", "clock"].contains(&way) {
            return Err(format!("--param way={way:?}: expected dropin or clock"));
        }
        let engine_wait: u64 = input.param("engine_wait", ENGINE_WAIT_SECS)?;
        let days: Option<u64> = input
            .params
            .contains_key("days")
            .then(|| input.param("days", 0))
            .transpose()?;
        let (jobs, problems) = host_jobs(input, false);
        let j = match jobs.as_slice() {
            [] => {
                return Err(super::nothing_in_scope(
                    "no hosted-engine host's VDSM certificate is in scope",
                    &problems,
                ));
            }
            [j] => j,
            more => {
                let names: Vec<&str> = more.iter().map(|j| j.host.name.as_str()).collect();
                return Err(format!(
                    "the HostedEngine VM runs on one host: name one hosted-engine host \
                     (--agent), not {}",
                    names.join(", ")
                ));
            }
        };
        let h = j.host;
        let target = format!("{}:{VDSM_CERT}", h.name);
        let k = |s: &str| format!("{}-he-{s}", h.name);
        let mut bring_up = match way {
            "dropin" => vec![
                format!("write {} (and {} on socket-activated libvirtd)", DROPINS[0], DROPINS[1]),
                "systemctl daemon-reload; systemctl stop libvirtd-tls.socket".into(),
            ],
            _ => vec![
                "systemctl stop chronyd; timedatectl set-time <inside the VDSM certificate's validity> (journaled first)".into(),
            ],
        };
        bring_up.extend([
            "systemctl restart libvirtd; systemctl restart vdsmd".into(),
            "hosted-engine --vm-start; hosted-engine --vm-status --json until the engine is up and good".into(),
        ]);
        if way == "clock" {
            bring_up.push("timedatectl set-time <real time>; systemctl start chronyd".into());
        }
        bring_up.push(format!(
            "openssl req -new -key {VDSM_KEY} (the host's subject)"
        ));
        let mut steps = vec![StepSpec {
            key: k("start"),
            name: format!(
                "HostedEngine VM up on {} despite the expired certificate (--way {way}), CSR from {VDSM_KEY}",
                j.fqdn
            ),
            stage: "vm-up".into(),
            target: target.clone(),
            agent: h.id.clone(),
            agent_name: h.name.clone(),
            action: "ovirt.hosted_engine_start".into(),
            args: json!({"way": way}),
            depends_on: vec![],
            commands: bring_up,
            files: if way == "dropin" {
                DROPINS.iter().map(|s| s.to_string()).collect()
            } else {
                vec![]
            },
            // The agent waits for the VM up to its `ovirt.he_vm_wait` (15 minutes by default).
            timeout_secs: 1200,
        }];
        let wait = u32::try_from(engine_wait).unwrap_or(u32::MAX);
        let mut sign = sign_step(
            j,
            days,
            &k("sign"),
            &k("start"),
            "csr_pem",
            wait.saturating_add(120),
        );
        sign.name = format!(
            "engine CA signs {} (once the engine VM's agent {} is connected again)",
            j.fqdn, j.engine.name
        );
        steps.push(sign);
        let mut files = vec![VDSM_CERT.to_owned()];
        files.extend(VDSM_COPIES.iter().map(|s| s.to_string()));
        let mut commands = vec![format!(
            "check the certificate: matches {VDSM_KEY}, valid now, chains to cacert.pem"
        )];
        if way == "dropin" {
            commands.push(format!(
                "remove {}; systemctl daemon-reload; systemctl start libvirtd-tls.socket where it was kept from starting",
                DROPINS.join(", ")
            ));
        }
        commands.push(format!("back up and replace {}", files.join(", ")));
        commands
            .push("systemctl restart libvirtd (with TLS); systemctl restart vdsmd; verify".into());
        steps.push(StepSpec {
            key: k("finish"),
            name: format!("install the VDSM certificate of {}, TLS back", j.fqdn),
            stage: "install".into(),
            target,
            agent: h.id.clone(),
            agent_name: h.name.clone(),
            action: "ovirt.hosted_engine_finish".into(),
            args: json!({
                "way": way,
                "cert_pem": {"$ref": format!("{}.cert_pem", k("sign"))},
            }),
            depends_on: vec![k("sign")],
            commands,
            files,
            timeout_secs: 600,
        });
        Ok(steps)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::plan::Target;

    fn agent(id: &str, platform: &str) -> Target {
        Target {
            id: id.into(),
            name: id.into(),
            platforms: vec![platform.into()],
            ..Default::default()
        }
    }

    use super::super::test_cert as cert;

    fn build(targets: &[&str], params: &[(&str, &str)]) -> Result<Vec<StepSpec>, String> {
        let agents = [
            agent("engine", "ovirt_engine"),
            agent("kvm01", "ovirt_node"),
            agent("kvm02", "ovirt_node"),
        ];
        let ca = "CN=engine.example.test.12345, O=example.test";
        let mut inventory = BTreeMap::new();
        inventory.insert(
            "engine".to_owned(),
            vec![cert(
                "ovirt.engine.ca",
                ca,
                ca,
                "/etc/pki/ovirt-engine/ca.pem",
                3000,
            )],
        );
        for h in ["kvm01", "kvm02"] {
            inventory.insert(
                h.to_owned(),
                vec![cert(
                    "ovirt.node.vdsm",
                    &format!("CN={h}.example.test, O=example.test"),
                    ca,
                    VDSM_CERT,
                    -30,
                )],
            );
        }
        let mut input = RecipeInput::for_test(agents.iter().collect(), inventory);
        input.targets.retain(|a| targets.contains(&a.name.as_str()));
        input.expiring_before = Some(certfleet_common::model::now() + 1);
        input.params = params
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        OvirtHostedEngine.build(&input)
    }

    #[test]
    fn host_start_engine_sign_host_finish_chained_by_refs() {
        let steps = build(&["kvm01"], &[("engine_wait", "60")]).unwrap();
        let plan: Vec<(&str, &str)> = steps
            .iter()
            .map(|s| (s.agent.as_str(), s.action.as_str()))
            .collect();
        assert_eq!(
            plan,
            [
                ("kvm01", "ovirt.hosted_engine_start"),
                ("engine", "ovirt.enroll_request"),
                ("kvm01", "ovirt.hosted_engine_finish"),
            ]
        );
        assert_eq!(steps[0].args["way"], "dropin");
        assert_eq!(
            steps[1].args["csr_pem"]["$ref"],
            format!("{}.csr_pem", steps[0].key)
        );
        assert_eq!(steps[1].args["san"], "DNS:kvm01.example.test");
        assert_eq!(steps[1].depends_on, [steps[0].key.clone()]);
        // The wait for the engine VM's agent counts in the signing step's time.
        assert_eq!(steps[1].timeout_secs, 180);
        assert_eq!(
            steps[2].args["cert_pem"]["$ref"],
            format!("{}.cert_pem", steps[1].key)
        );
        assert_eq!(steps[2].depends_on, [steps[1].key.clone()]);
        let clock = build(&["kvm01"], &[("way", "clock")]).unwrap();
        assert_eq!(clock[0].args["way"], "clock");
        assert_eq!(clock[2].args["way"], "clock");
        assert!(clock[0].commands.iter().any(|c| c.contains("chronyd")));
    }

    #[test]
    fn refuses_two_hosts_a_bad_way_and_answers_nothing_for_the_engine() {
        let two = build(&["kvm01", "kvm02"], &[]).unwrap_err();
        assert!(
            two.contains("one host") && two.contains("kvm01, kvm02"),
            "{two}"
        );
        let way = build(&["kvm01"], &[("way", "reboot")]).unwrap_err();
        assert!(way.contains("way=\"reboot\""), "{way}");
        let none = build(&["engine"], &[]).unwrap_err();
        assert!(none.starts_with("nothing to renew"), "{none}");
    }
}

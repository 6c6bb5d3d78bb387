//! `ovirt-engine`: the engine's own certificates (reference A5, A6, A13, A14 step 3, seed 003).
//!
//! 1. Self-hosted engine only (`--param he_host=AGENT`, the agent of a hosted-engine host):
//!    `ovirt.global_maintenance mode=global` there (verified with `hosted-engine --vm-status
//!    --json`);
//! 2. `ovirt.engine_setup` on the engine: PKI backed up, `engine-setup --offline
//!    --accept-defaults` with the renew answer file (and `continueSetupOnHEVM` after step 1),
//!    which renews what A5's rules pick among `engine`, `jboss`, `websocket-proxy`, `apache`,
//!    `reports` and restarts the engine services;
//! 3. `ovirt.global_maintenance mode=none` on the HE host;
//! 4. `service.restart ovirt-imageio` on every host the engine CA enrolled (seed 003);
//! 5. `ovirt.engine_reissue` for each due OVN certificate (`ovirt-provider-ovn`, `ovn-ndb`,
//!    `ovn-sdb`), which engine-setup before 4.5.2.1 skips: `pki-enroll-pkcs12.sh --keep-key`
//!    with the SAN (A13; not seed 003's symlinks to `apache`'s key, which would share one key
//!    between services); the keys keep the owner, group and mode engine-setup gave them (0640,
//!    group `openvswitch`, `ovirtproviderovn.py`), then `service.restart` of what engine-setup
//!    restarts for OVN: `openvswitch`, `ovn-northd`, `ovirt-provider-ovn`;
//! 6. `ovirt.engine_verify` of everything renewed: chains to `ca.pem`, valid past
//!    `--param min_days=N` (default 60), key matches.
//!
//! The CAs: engine-setup renews `ca.pem` / `qemu-ca.pem` itself when one has less than
//! `CertExpirationWarnPeriodInDays` left (`ca.py`; `--param ca_window_days=N`, default 365,
//! the 4.5 default) and warns that "manually distributed copies" must be refreshed. When a CA
//! is inside that window (or in scope), step 2 runs for it, and every host this CA enrolled gets
//! `ovirt.refresh_host_ca` after it: the new CA files from step 2's result into every copy the
//! host-deploy roles wrote, each leaf verified against them (a no-op when engine-setup renewed
//! nothing).
//!
//! Targets: agents holding `/etc/pki/ovirt-engine/ca.pem` (`ovirt.engine.ca`) whose engine
//! service certificates or CAs are in scope (`--expiring-within`, `--role`).

use serde_json::json;

use super::{Recipe, RecipeInput, StepSpec, openssl_subject};
use crate::plan::Target;
use certfleet_common::model::CertRecord;

/// engine-setup's `_COMMON_ENTITIES`, then the vmconsole proxy certificates its vmconsole
/// plugin re-issues inside the warning window (`vmconsole_proxy_helper/pki.py`
/// `_refresh_needed`, 4.5.1+; their OpenSSH twins with them).
pub const SETUP_ENTITIES: &[&str] = &[
    "engine",
    "jboss",
    "websocket-proxy",
    "apache",
    "reports",
    "vmconsole-proxy-helper",
    "vmconsole-proxy-host",
    "vmconsole-proxy-user",
];
/// OVN entities engine-setup (before 4.5.2.1) leaves alone.
pub const OVN_ENTITIES: &[&str] = &["ovirt-provider-ovn", "ovn-ndb", "ovn-sdb"];
/// What engine-setup restarts for OVN (`OvnEnv.ENGINE_MACHINE_OVN_SERVICES`, then
/// `OVIRT_PROVIDER_OVN_SERVICE`), in that order.
pub const OVN_UNITS: &[&str] = &["openvswitch", "ovn-northd", "ovirt-provider-ovn"];
/// Where the host-deploy roles copy the engine and QEMU CAs on a host (for the plan display).
pub const HOST_CA_COPIES: &[&str] = &[
    "/etc/pki/vdsm/certs/cacert.pem",
    "/etc/pki/vdsm/libvirt-spice/ca-cert.pem",
    "/etc/pki/vdsm/libvirt-vnc/ca-cert.pem",
    "/etc/pki/CA/cacert.pem",
    "/etc/pki/vdsm/ovn/ca-cert.pem",
    "/etc/pki/vdsm/libvirt-migrate/ca-cert.pem",
];
const PKI: &str = "/etc/pki/ovirt-engine";

/// `ovirt-engine`.
pub struct OvirtEngine;

/// The engine's certificate of entity `name` (`certs/<name>.cer`).
/// Also its OpenSSH twin `certs/<name>-cert.pub` (vmconsole proxy), whichever expires first.
fn entity<'a>(input: &'a RecipeInput<'a>, agent: &str, name: &str) -> Option<&'a CertRecord> {
    let paths = [
        format!("{PKI}/certs/{name}.cer"),
        format!("{PKI}/certs/{name}-cert.pub"),
    ];
    input
        .inventory
        .get(agent)?
        .iter()
        .filter(|c| {
            c.role.starts_with("ovirt.engine.")
                && c.locations
                    .iter()
                    .any(|l| l.kind == "file" && paths.iter().any(|p| l.path.ends_with(p.as_str())))
        })
        .min_by_key(|c| c.not_after)
}

impl Recipe for OvirtEngine {
    fn name(&self) -> &'static str {
        "ovirt-engine"
    }

    fn about(&self) -> &'static str {
        "oVirt engine: HE global maintenance, engine-setup --offline renew, imageio restarts, OVN re-issue, verify"
    }

    fn build(&self, input: &RecipeInput<'_>) -> Result<Vec<StepSpec>, String> {
        let in_scope = |c: &CertRecord| {
            input.due(c.not_after)
                && (input.roles.is_empty()
                    || input.roles.iter().any(|r| c.role.starts_with(r.as_str())))
        };
        let min_days: i64 = input.param("min_days", 60)?;
        let ca_window: i64 = input.param("ca_window_days", 365)?;
        let he = match input.params.get("he_host") {
            Some(n) => Some(
                input
                    .agents
                    .iter()
                    .copied()
                    .find(|a| &a.name == n)
                    .ok_or_else(|| format!("--param he_host={n}: no such connected agent"))?,
            ),
            None => None,
        };
        let mut steps = Vec::new();
        for e in &input.targets {
            let Some(ca) = input.cert_at(&e.id, &format!("{PKI}/ca.pem")) else {
                continue;
            };
            let setup_due: Vec<&str> = SETUP_ENTITIES
                .iter()
                .copied()
                .filter(|n| {
                    // engine-setup also renews a common entity without subjectAltName
                    // (`ok_to_renew_cert`); vmconsole certificates never have one.
                    let common = !n.starts_with("vmconsole-");
                    entity(input, &e.id, n)
                        .is_some_and(|c| in_scope(c) || (common && c.sans.is_empty()))
                })
                .collect();
            let ovn_due: Vec<(&str, &CertRecord)> = OVN_ENTITIES
                .iter()
                .filter_map(|n| {
                    entity(input, &e.id, n)
                        .filter(|c| in_scope(c))
                        .map(|c| (*n, c))
                })
                .collect();
            // engine-setup renews a CA inside its window (`ca.py` `_miscUpgrade`).
            let now = certfleet_common::model::now();
            let ca_due: Vec<&str> = [
                ("ca.pem", Some(ca)),
                (
                    "qemu-ca.pem",
                    input.cert_at(&e.id, &format!("{PKI}/qemu-ca.pem")),
                ),
            ]
            .into_iter()
            .filter_map(|(f, c)| {
                c.filter(|c| c.not_after - now < ca_window * 86_400 || in_scope(c))
                    .map(|_| f)
            })
            .collect();
            if setup_due.is_empty() && ovn_due.is_empty() && ca_due.is_empty() {
                continue;
            }
            let target = format!("{}:{PKI}", e.name);
            let k = |s: &str| format!("{}-engine-{s}", e.name);
            let on = |a: &Target,
                      key: String,
                      name: String,
                      stage: &str,
                      action: &str,
                      args: serde_json::Value,
                      deps: Vec<String>,
                      cmds: Vec<String>,
                      secs: u32| StepSpec {
                key,
                name,
                stage: stage.into(),
                // One target for the whole engine renewal, whichever agent runs the step:
                // `--max-parallel` counts targets, and the HE host's steps bracket the
                // engine's.
                target: target.clone(),
                agent: a.id.clone(),
                agent_name: a.name.clone(),
                action: action.into(),
                args,
                depends_on: deps,
                commands: cmds,
                files: vec![],
                timeout_secs: secs,
            };
            let mut after_setup = vec![];
            if !setup_due.is_empty() || !ca_due.is_empty() {
                let mut deps = vec![];
                if let Some(h) = he {
                    steps.push(on(
                        h,
                        k("gm-on"),
                        format!("global maintenance on via {}", h.name),
                        "maintenance",
                        "ovirt.global_maintenance",
                        json!({"mode": "global"}),
                        vec![],
                        vec![
                            "hosted-engine --set-maintenance --mode=global".into(),
                            "hosted-engine --vm-status --json".into(),
                        ],
                        300,
                    ));
                    deps.push(k("gm-on"));
                }
                let what: Vec<&str> = setup_due.iter().chain(ca_due.iter()).copied().collect();
                let mut s = on(
                    e,
                    k("setup"),
                    format!("engine-setup renews {}", what.join(", ")),
                    "setup",
                    "ovirt.engine_setup",
                    json!({"hosted_engine": he.is_some(), "due": setup_due, "ca_due": ca_due}),
                    deps,
                    vec![format!(
                        "engine-setup --offline --accept-defaults --config-append=/root/certfleet-renew-pki.conf (OVESETUP_PKI/renew=bool:True{})",
                        if he.is_some() {
                            ", OVESETUP_CONFIG/continueSetupOnHEVM=bool:True"
                        } else {
                            ""
                        }
                    )],
                    3600,
                );
                s.files = vec![format!("{PKI}/ (all files, backed up)")];
                steps.push(s);
                after_setup.push(k("setup"));
                if let Some(h) = he {
                    steps.push(on(
                        h,
                        k("gm-off"),
                        format!("global maintenance off via {}", h.name),
                        "maintenance",
                        "ovirt.global_maintenance",
                        json!({"mode": "none"}),
                        vec![k("setup")],
                        vec!["hosted-engine --set-maintenance --mode=none".into()],
                        300,
                    ));
                    after_setup = vec![k("gm-off")];
                }
                // Hosts this engine enrolled restart ovirt-imageio (seed 003) and, when a CA
                // was due, get its renewed files (engine-setup: "please refresh manually
                // distributed copies").
                for a in &input.agents {
                    let Some(v) = input.cert_at(&a.id, "/etc/pki/vdsm/certs/vdsmcert.pem") else {
                        continue;
                    };
                    if v.role != "ovirt.node.vdsm" || v.issuer != ca.subject {
                        continue;
                    }
                    let mut imageio_deps = after_setup.clone();
                    if !ca_due.is_empty() {
                        let key = k(&format!("ca-copies-{}", a.name));
                        let mut r = on(
                            a,
                            key.clone(),
                            format!("refresh the engine/QEMU CA copies on {}", a.name),
                            "ca-copies",
                            "ovirt.refresh_host_ca",
                            json!({
                                "ca_pem": {"$ref": format!("{}.ca_pem", k("setup"))},
                                "qemu_ca_pem": {"$ref": format!("{}.qemu_ca_pem", k("setup"))},
                                "restart": ["libvirtd", "vdsmd"],
                            }),
                            after_setup.clone(),
                            vec![
                                "install the renewed ca.pem / qemu-ca.pem where they differ (owner/mode kept)".into(),
                                "openssl verify -CAfile <copy> <leaf> for each copy".into(),
                                "systemctl restart libvirtd vdsmd".into(),
                            ],
                            300,
                        );
                        r.files = HOST_CA_COPIES.iter().map(|s| s.to_string()).collect();
                        steps.push(r);
                        imageio_deps = vec![key];
                    }
                    steps.push(on(
                        a,
                        k(&format!("imageio-{}", a.name)),
                        format!("restart ovirt-imageio on {}", a.name),
                        "restart",
                        "service.restart",
                        json!({"units": ["ovirt-imageio"]}),
                        imageio_deps,
                        vec![
                            "systemctl restart ovirt-imageio && systemctl is-active ovirt-imageio"
                                .into(),
                        ],
                        300,
                    ));
                }
            }
            let mut verify_deps = after_setup.clone();
            let mut reissued = vec![];
            for (n, c) in &ovn_due {
                let subject = openssl_subject(&c.subject);
                let cn = c
                    .subject
                    .split(", ")
                    .find_map(|p| p.strip_prefix("CN="))
                    .unwrap_or_default();
                let sans: Vec<&str> = c
                    .sans
                    .iter()
                    .map(String::as_str)
                    .filter(|s| s.starts_with("DNS:") || s.starts_with("IP:"))
                    .collect();
                let san = if sans.is_empty() {
                    format!("DNS:{cn}")
                } else {
                    sans.join(",")
                };
                let mut s = on(
                    e,
                    k(&format!("reissue-{n}")),
                    format!("re-issue {n} with its key"),
                    "reissue",
                    "ovirt.engine_reissue",
                    json!({"name": n, "subject": subject, "san": san}),
                    after_setup.clone(),
                    vec![format!(
                        "pki-enroll-pkcs12.sh --name={n} --subject='{subject}' --san={san} --keep-key; pki-pkcs12-extract.sh --name={n} --key=keys/{n}.key.nopass"
                    )],
                    300,
                );
                s.files = vec![
                    format!("{PKI}/certs/{n}.cer"),
                    format!("{PKI}/keys/{n}.p12"),
                    format!("{PKI}/keys/{n}.key.nopass"),
                    format!("{PKI}/requests/{n}.req"),
                ];
                steps.push(s);
                reissued.push(k(&format!("reissue-{n}")));
            }
            if !reissued.is_empty() {
                steps.push(on(
                    e,
                    k("ovn-restart"),
                    format!("restart {}", OVN_UNITS.join(", ")),
                    "restart",
                    "service.restart",
                    json!({"units": OVN_UNITS}),
                    reissued,
                    OVN_UNITS
                        .iter()
                        .map(|u| format!("systemctl restart {u} && systemctl is-active {u}"))
                        .collect(),
                    300,
                ));
                verify_deps = vec![k("ovn-restart")];
            }
            let names: Vec<&str> = setup_due
                .iter()
                .copied()
                .chain(ovn_due.iter().map(|(n, _)| *n))
                .collect();
            if names.is_empty() {
                // Only a CA was due: the hosts' refresh steps verify against it.
                continue;
            }
            steps.push(on(
                e,
                k("verify"),
                format!("verify {}", names.join(", ")),
                "verify",
                "ovirt.engine_verify",
                json!({"names": names, "min_days": min_days}),
                verify_deps,
                vec![format!("openssl verify -CAfile ca.pem certs/<name>.cer; notAfter > now + {min_days}d; key.nopass matches")],
                300,
            ));
        }
        if steps.is_empty() {
            return Err(
                "nothing to renew: no oVirt engine service certificate or CA is in scope".into(),
            );
        }
        Ok(steps)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn agent(id: &str) -> Target {
        serde_json::from_value(json!({
            "id": id, "name": id, "hostname": id, "platforms": [], "version": "0",
            "state": "active", "enrolled_at": 0, "last_seen": 0, "cert_not_after": 0,
            "cert_fingerprint": "", "key_id": "", "labels": {},
        }))
        .unwrap()
    }

    fn cert(role: &str, issuer: &str, path: &str, days: i64) -> CertRecord {
        let now = certfleet_common::model::now();
        let t = |s: i64| certfleet_common::model::format_time(s);
        serde_json::from_value(json!({
            "fingerprint_sha256": format!("{role}{path}"),
            "subject": "C=US, O=example.test, CN=engine.example.test",
            "issuer": issuer, "serial": "1000", "sans": ["DNS:engine.example.test"],
            "not_before": t(now - 86_400), "not_after": t(now + days * 86_400),
            "key_algorithm": "RSA", "key_bits": 2048, "is_ca": false,
            "subject_key_id": "", "authority_key_id": "", "role": role,
            "locations": [{"kind": "file", "path": format!("/root-prefix{path}")}],
        }))
        .unwrap()
    }

    #[test]
    fn he_maintenance_brackets_engine_setup_and_ovn_is_reissued() {
        let ca = "C=US, O=example.test, CN=engine.example.test.12345";
        let (engine, kvm01) = (agent("engine"), agent("kvm01"));
        let mut inventory = BTreeMap::new();
        inventory.insert(
            "engine".to_owned(),
            vec![
                cert("ovirt.engine.ca", ca, "/etc/pki/ovirt-engine/ca.pem", 7000),
                cert(
                    "ovirt.engine.apache",
                    ca,
                    "/etc/pki/ovirt-engine/certs/apache.cer",
                    20,
                ),
                cert(
                    "ovirt.engine.jboss",
                    ca,
                    "/etc/pki/ovirt-engine/certs/jboss.cer",
                    1500,
                ),
                cert(
                    "ovirt.engine.ovn-ndb",
                    ca,
                    "/etc/pki/ovirt-engine/certs/ovn-ndb.cer",
                    10,
                ),
            ],
        );
        inventory.get_mut("engine").unwrap()[0].subject = ca.into();
        let mut vdsm = cert(
            "ovirt.node.vdsm",
            ca,
            "/etc/pki/vdsm/certs/vdsmcert.pem",
            1500,
        );
        vdsm.subject = "O=example.test, CN=kvm01.example.test".into();
        inventory.insert("kvm01".to_owned(), vec![vdsm]);
        let all = vec![&engine, &kvm01];
        let mut params = BTreeMap::new();
        params.insert("he_host".to_owned(), "kvm01".to_owned());
        let mut input = RecipeInput::for_test(all, inventory);
        input.params = params;
        let steps = OvirtEngine.build(&input).unwrap();
        let keys: Vec<&str> = steps.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "engine-engine-gm-on",
                "engine-engine-setup",
                "engine-engine-gm-off",
                "engine-engine-imageio-kvm01",
                "engine-engine-reissue-ovn-ndb",
                "engine-engine-ovn-restart",
                "engine-engine-verify",
            ]
        );
        assert_eq!(steps[0].agent, "kvm01");
        assert_eq!(steps[1].depends_on, ["engine-engine-gm-on"]);
        assert_eq!(steps[1].args["due"], json!(["apache"]));
        assert_eq!(steps[1].args["hosted_engine"], true);
        assert_eq!(
            steps[5].args["units"],
            json!(["openvswitch", "ovn-northd", "ovirt-provider-ovn"])
        );
        assert_eq!(steps[6].args["names"], json!(["apache", "ovn-ndb"]));
        assert!(steps.iter().all(|s| s.target == steps[0].target));
        // A CA inside engine-setup's window: engine-setup runs for it alone, and the host it
        // enrolled gets the renewed CA files before ovirt-imageio restarts.
        let mut ca_only = BTreeMap::new();
        let mut ca_rec = cert("ovirt.engine.ca", ca, "/etc/pki/ovirt-engine/ca.pem", 200);
        ca_rec.subject = ca.into();
        ca_only.insert("engine".to_owned(), vec![ca_rec]);
        ca_only.insert("kvm01".to_owned(), input.inventory["kvm01"].clone());
        let ca_input = RecipeInput::for_test(input.agents.clone(), ca_only);
        let steps = OvirtEngine.build(&ca_input).unwrap();
        let keys: Vec<&str> = steps.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "engine-engine-setup",
                "engine-engine-ca-copies-kvm01",
                "engine-engine-imageio-kvm01",
            ]
        );
        assert_eq!(steps[0].args["ca_due"], json!(["ca.pem"]));
        assert_eq!(steps[1].agent, "kvm01");
        assert_eq!(steps[1].action, "ovirt.refresh_host_ca");
        assert_eq!(
            steps[1].args["ca_pem"]["$ref"],
            "engine-engine-setup.ca_pem"
        );
        assert_eq!(steps[2].depends_on, ["engine-engine-ca-copies-kvm01"]);
        // Outside the window (--param ca_window_days=100): nothing to do.
        let mut narrow = ca_input;
        narrow.params.insert("ca_window_days".into(), "100".into());
        assert!(OvirtEngine.build(&narrow).is_err());

        // Nothing due: a clear refusal.
        let mut quiet = input;
        quiet.expiring_before = Some(certfleet_common::model::now() + 86_400);
        assert!(
            OvirtEngine
                .build(&quiet)
                .unwrap_err()
                .contains("nothing to renew")
        );
    }
}

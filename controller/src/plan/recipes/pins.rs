//! `pins-retrust`: re-trusts the stale pins of the targeted agents and renews nothing. For
//! after another renewer (vCenter's own auto-renewal, an operator by hand) changed a certificate
//! that something pins (issue 13: "still verify that the renewal happened in time and re-trust
//! the pins"). Per agent, one chain:
//! 1. stale pins the agent discovered on its vCenter (`vpx_ext` thumbprints, Lookup Service
//!    registrations) → one `vsphere.retrust_pins`: they are made to trust what VECS holds now;
//! 2. each stale declared pin with a `retrust_command` or `retrust_webhook` → `pins.retrust`.
//!
//! Stale pins certfleet cannot re-trust (declared without a way to) are named when nothing
//! else is to do; pins in state `match` or `unknown` are left alone.

use certfleet_common::model::{Pin, pin_state};
use serde_json::json;

use super::{Recipe, RecipeInput, StepSpec};

/// Pin sources the agent on a vCenter re-trusts with `vsphere.retrust_pins`.
const VCENTER_SOURCES: &[&str] = &["vpx_ext", "lookup_service"];

/// `pins-retrust`.
pub struct PinsRetrust;

impl Recipe for PinsRetrust {
    fn name(&self) -> &'static str {
        "pins-retrust"
    }

    fn about(&self) -> &'static str {
        "re-trust stale pins (vpx_ext thumbprints, Lookup Service trust, declared consumers) after a certificate changed outside certfleet; renews nothing"
    }

    fn build(&self, input: &RecipeInput<'_>) -> Result<Vec<StepSpec>, String> {
        let mut steps: Vec<StepSpec> = Vec::new();
        let mut by_hand = Vec::new();
        for a in &input.targets {
            let stale: Vec<&Pin> = input
                .pins
                .get(&a.id)
                .map(|p| p.iter().filter(|p| p.state == pin_state::STALE).collect())
                .unwrap_or_default();
            let mut prev: Option<String> = None;
            let mut push = |steps: &mut Vec<StepSpec>, mut s: StepSpec| {
                s.depends_on = prev.iter().cloned().collect();
                prev = Some(s.key.clone());
                steps.push(s);
            };
            let vcenter: Vec<String> = stale
                .iter()
                .filter(|p| VCENTER_SOURCES.contains(&p.source.as_str()))
                .map(|p| format!("{} {}", p.source, p.name))
                .collect();
            if !vcenter.is_empty() {
                push(
                    &mut steps,
                    StepSpec {
                        key: format!("{}-vcenter-pins", a.name),
                        name: format!("re-trust {} vCenter pin(s): {}", vcenter.len(), vcenter.join(", ")),
                        stage: "retrust".into(),
                        target: a.name.clone(),
                        agent: a.id.clone(),
                        agent_name: a.name.clone(),
                        action: "vsphere.retrust_pins".into(),
                        args: json!({}),
                        depends_on: vec![],
                        commands: vec![
                            "/usr/lib/vmware-vmafd/bin/vecs-cli entry getcert --store MACHINE_SSL_CERT --alias __MACHINE_CERT ; --store vpxd-extension --alias vpxd-extension".into(),
                            "ldapsearch -b cn=Sites,cn=Configuration,<dn>  (registrations at the PNID trusting another certificate) ; ldapmodify WORK/ls-trust.ldif (undo: WORK/ls-trust-undo.ldif); read back".into(),
                            "/opt/vmware/vpostgres/current/bin/psql -d VCDB -U postgres -c \"UPDATE vpx_ext SET thumbprint = '<SHA-1 of the certificate in VECS>' WHERE ext_id IN (...)\"  (KB 57379; old rows in WORK/vpx_ext-*.txt); read back".into(),
                            "on any failure: every change above undone".into(),
                        ],
                        files: vec![
                            "vmdir Lookup Service registrations (vmwLKUPEndpointSslTrust, vmwLKUPSslTrustAnchor)".into(),
                            "VCDB vpx_ext".into(),
                            "STATE_DIR/vsphere/<step>/ (WORK)".into(),
                        ],
                        timeout_secs: 300,
                    },
                );
            }
            for p in stale.iter().filter(|p| p.source == "declared") {
                if !matches!(p.retrust.as_str(), "command" | "webhook") {
                    by_hand.push(format!("{}: declared pin {}", a.name, p.name));
                    continue;
                }
                push(
                    &mut steps,
                    crate::pins::retrust_step(
                        format!("{}-retrust-{}", a.name, p.name),
                        &a.name,
                        &a.id,
                        &a.name,
                        p,
                        vec![],
                    ),
                );
            }
        }
        if steps.is_empty() {
            return Err(if by_hand.is_empty() {
                "nothing to re-trust: no targeted agent reports a stale pin".into()
            } else {
                format!(
                    "nothing certfleet can re-trust; stale pins without retrust_command or retrust_webhook (re-trust by hand): {}",
                    by_hand.join(", ")
                )
            });
        }
        Ok(steps)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::plan::Target;

    fn pin(source: &str, name: &str, state: &str, retrust: &str) -> Pin {
        Pin {
            source: source.into(),
            name: name.into(),
            cert_role: "vsphere.machine_ssl".into(),
            state: state.into(),
            retrust: retrust.into(),
            ..Pin::default()
        }
    }

    #[test]
    fn stale_pins_are_retrusted_per_agent_in_one_chain_and_the_others_left_alone() {
        let vc: Target = serde_json::from_value(json!({"id": "a1", "name": "vc1"})).unwrap();
        let mut input = RecipeInput::for_test(vec![&vc], BTreeMap::new());
        input.pins.insert(
            "a1".into(),
            vec![
                pin("vpx_ext", "com.vmware.vsan.health", "stale", ""),
                pin("lookup_service", "cs.identity https://vc1/sts", "match", ""),
                pin("declared", "backup", "stale", "command"),
                pin("declared", "nsx", "stale", "webhook"),
                pin("declared", "monitor", "match", "command"),
                pin("declared", "old-tool", "stale", ""),
            ],
        );
        let steps = PinsRetrust.build(&input).unwrap();
        let got: Vec<(&str, &str, Vec<String>)> = steps
            .iter()
            .map(|s| (s.key.as_str(), s.action.as_str(), s.depends_on.clone()))
            .collect();
        assert_eq!(
            got,
            [
                ("vc1-vcenter-pins", "vsphere.retrust_pins", vec![]),
                (
                    "vc1-retrust-backup",
                    "pins.retrust",
                    vec!["vc1-vcenter-pins".to_owned()]
                ),
                (
                    "vc1-retrust-nsx",
                    "pins.retrust",
                    vec!["vc1-retrust-backup".to_owned()]
                ),
            ]
        );
        assert!(steps[0].name.contains("vpx_ext com.vmware.vsan.health"));
        // Nothing re-trustable: the stale pins needing a hand are named.
        input
            .pins
            .insert("a1".into(), vec![pin("declared", "old-tool", "stale", "")]);
        let err = PinsRetrust.build(&input).unwrap_err();
        assert!(err.contains("vc1: declared pin old-tool"), "{err}");
    }
}

//! Renewers other than certfleet, as `renewer` health facts the controller turns into a
//! certificate's owner (`platform:<name>`; see the controller's `inventory/owner.rs`).
//!
//! Two sources:
//! * found by a collector: vCenter's ESXi/Machine SSL auto-renew ([`vcenter_auto_renew`],
//!   called by the `esxi` collector with vCenter's `vpxd.certmgmt.*` settings);
//! * declared in the agent config, for renewers no collector can see (NSX 4.2.1's automatic
//!   appliance certificate replacement, VCF Operations, `kubeadm upgrade apply`, a team's own
//!   cron job):
//!
//! ```toml
//! [[renewers]]
//! name = "nsx-auto-replace"        # shown as owner platform:nsx-auto-replace
//! roles = ["endpoint.nsx"]         # roles (or families) it renews
//! paths = ["/etc/nsx/api.crt"]     # and/or locations (file path, endpoint address)
//! renew_before = "31d"             # how long before expiry it renews (optional)
//! grace = "1d"                     # how late it may be before certfleet calls it overdue
//! ```
//!
//! The fact's detail starts with `lead_days=N; grace_days=N;` (both optional), which the
//! controller reads to decide when a renewal is overdue.

use std::time::Duration;

use certfleet_common::model::HealthFact;
use serde::Deserialize;

use super::Collection;

/// Health fact kind of a renewer (the controller's `owner::RENEWER_FACT`).
pub const FACT: &str = "renewer";

/// A `[[renewers]]` entry of the agent config.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Declared {
    /// Short name (`a-z`, `0-9`, `-`): the owner shows as `platform:<name>`.
    pub name: String,
    /// Roles, or role families (`kubeadm` covers `kubeadm.apiserver`), it renews.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Locations it renews: a file path or an endpoint address as the inventory shows them.
    #[serde(default)]
    pub paths: Vec<String>,
    /// How long before expiry it renews (unknown: the role's warning window is used).
    #[serde(default, with = "opt_duration")]
    pub renew_before: Option<Duration>,
    /// How late it may be before certfleet reports the renewal overdue.
    #[serde(default, with = "opt_duration")]
    pub grace: Option<Duration>,
}

/// Keys of a `[[renewers]]` entry (for the config's all-at-once unknown key report).
pub const KEYS: &[&str] = &["name", "roles", "paths", "renew_before", "grace"];

mod opt_duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}")))
    }
}

/// Everything wrong with the `[[renewers]]` entries.
pub fn validate(declared: &[Declared]) -> Vec<String> {
    let mut problems = Vec::new();
    for (i, r) in declared.iter().enumerate() {
        let at = format!("renewers[{i}]");
        if r.name.is_empty()
            || !r
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            problems.push(format!(
                "{at}: name {:?} must be lowercase letters, digits and '-'",
                r.name
            ));
        }
        if r.roles.is_empty() && r.paths.is_empty() {
            problems.push(format!("{at} ({}): give roles or paths it renews", r.name));
        }
        if r.roles.iter().chain(&r.paths).any(|s| s.trim().is_empty()) {
            problems.push(format!("{at} ({}): empty role or path", r.name));
        }
    }
    problems
}

fn days(d: Option<Duration>) -> Option<u64> {
    d.map(|d| d.as_secs().div_ceil(86_400))
}

/// One fact per role and path of each declared renewer.
pub fn declared_facts(declared: &[Declared], out: &mut Collection) {
    for r in declared {
        let mut detail = String::new();
        if let Some(d) = days(r.renew_before) {
            detail.push_str(&format!("lead_days={d}; "));
        }
        if let Some(d) = days(r.grace) {
            detail.push_str(&format!("grace_days={d}; "));
        }
        detail.push_str("declared in the agent config ([[renewers]])");
        for subject in r.roles.iter().chain(&r.paths) {
            out.health.push(HealthFact {
                kind: FACT.into(),
                subject: subject.clone(),
                state: r.name.clone(),
                detail: detail.clone(),
                healthy: true,
            });
        }
    }
}

/// vCenter's own renewal of ESXi host and Machine SSL certificates, from its `vpxd.certmgmt.*`
/// advanced settings (`OptionManager`, stored in VCDB `vpx_parameter`), as `(role, lead days,
/// detail)`; empty when vCenter does not renew by itself.
///
/// Sources: VMware's "What's new with vSphere 9.1" (blogs.vmware.com, 2026-05): "The vCenter
/// TLS certificate is automatically renewed 5 days prior to expiration. ESX certificate is
/// renewed 30 days prior to expiration. The ESX threshold is configurable ... using the setting
/// `vpxd.certmgmt.certs.autoRenewThreshold`", and "automatic renewal takes place for VMCA
/// managed certificates"; Broadcom KB 427937 (the feature exists from vCenter 8.0 U3h /
/// VCF 9.0.2). So: the threshold setting present and the mode `vmca` means vCenter renews.
/// Its poll interval (`vpxd.certmgmt.certs.pollIntervalDays`, default 5, vSphere Security
/// guide) is the grace.
///
/// UNVERIFIED: that 8.0 U3h exposes the same setting name as 9.1 (KB 427937's text names no
/// setting); that the feature has no separate on/off switch — any `vpxd.certmgmt.*autoRenew*`
/// setting other than the threshold whose value is `false`, `0` or `disabled` is taken as
/// "off"; that Machine SSL auto-renew applies to a VMCA-signed Machine SSL only (not checked
/// here: the owner is set for the role).
pub fn vcenter_auto_renew(options: &[(String, String)]) -> Vec<(&'static str, u64, String)> {
    const THRESHOLD: &str = "vpxd.certmgmt.certs.autoRenewThreshold";
    let get = |k: &str| {
        options
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.trim())
    };
    let Some(threshold) = get(THRESHOLD) else {
        return Vec::new();
    };
    let mode = get("vpxd.certmgmt.mode").unwrap_or("vmca");
    if !mode.is_empty() && mode != "vmca" {
        return Vec::new();
    }
    let switched_off = options.iter().any(|(k, v)| {
        k != THRESHOLD
            && k.starts_with("vpxd.certmgmt.")
            && k.to_ascii_lowercase().contains("autorenew")
            && matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "false" | "0" | "disabled"
            )
    });
    if switched_off {
        return Vec::new();
    }
    let esx_lead: u64 = threshold.parse().unwrap_or(30);
    let grace: u64 = get("vpxd.certmgmt.certs.pollIntervalDays")
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    vec![
        (
            "vsphere.esxi_host",
            esx_lead,
            format!(
                "lead_days={esx_lead}; grace_days={grace}; {THRESHOLD}={threshold}, vpxd.certmgmt.mode={mode}"
            ),
        ),
        (
            "vsphere.machine_ssl",
            5,
            format!(
                "lead_days=5; grace_days=1; vCenter renews its VMCA-signed Machine SSL certificate 5 days before expiry ({THRESHOLD} present)"
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(kv: &[(&str, &str)]) -> Vec<(String, String)> {
        kv.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn vcenter_renews_only_with_the_threshold_setting_in_vmca_mode() {
        assert!(vcenter_auto_renew(&opts(&[("vpxd.certmgmt.mode", "vmca")])).is_empty());
        let on = vcenter_auto_renew(&opts(&[
            ("vpxd.certmgmt.mode", "vmca"),
            ("vpxd.certmgmt.certs.autoRenewThreshold", "45"),
            ("vpxd.certmgmt.certs.pollIntervalDays", "3"),
        ]));
        assert_eq!(on.len(), 2);
        assert_eq!(on[0].0, "vsphere.esxi_host");
        assert_eq!(on[0].1, 45);
        assert!(
            on[0].2.starts_with("lead_days=45; grace_days=3; "),
            "{on:?}"
        );
        assert!(
            vcenter_auto_renew(&opts(&[
                ("vpxd.certmgmt.mode", "custom"),
                ("vpxd.certmgmt.certs.autoRenewThreshold", "30"),
            ]))
            .is_empty()
        );
        assert!(
            vcenter_auto_renew(&opts(&[
                ("vpxd.certmgmt.certs.autoRenewThreshold", "30"),
                ("vpxd.certmgmt.certs.autoRenew.enabled", "false"),
            ]))
            .is_empty()
        );
    }

    #[test]
    fn declared_renewers_become_facts_and_bad_entries_are_all_reported() {
        let cfg: Vec<Declared> = toml::from_str::<toml::Table>(
            "[[renewers]]\nname = \"nsx-auto-replace\"\nroles = [\"endpoint.nsx\"]\npaths = [\"10.0.0.5:443\"]\nrenew_before = \"31d\"\n",
        )
        .unwrap()["renewers"]
            .clone()
            .try_into()
            .unwrap();
        assert!(validate(&cfg).is_empty());
        let mut out = Collection::default();
        declared_facts(&cfg, &mut out);
        assert_eq!(out.health.len(), 2);
        assert_eq!(out.health[1].subject, "10.0.0.5:443");
        assert_eq!(out.health[1].state, "nsx-auto-replace");
        assert!(out.health[0].detail.starts_with("lead_days=31; "));
        let bad = vec![Declared {
            name: "NSX".into(),
            roles: vec![],
            paths: vec![],
            renew_before: None,
            grace: None,
        }];
        let p = validate(&bad);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains("renewers[0]: name \"NSX\""), "{p:?}");
    }
}

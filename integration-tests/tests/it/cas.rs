//! `certfleet inventory cas` on the demo fleet: every CA the agents reported is listed with the
//! leaves it signed and its cliff (CA not-after minus the platform's default leaf lifetime),
//! and each CA has its gauges on /metrics. Called from the demo-fleet inventory test so the
//! fleet is set up once.

use std::collections::BTreeSet;

use certfleet_common::model::parse_time;
use serde_json::Value;

use crate::support::Controller;

const DAY: i64 = 86_400;

/// Checks `inventory cas` (JSON and table) and the CA gauges against the inventory `all`
/// (`certfleet inventory -o json`) of the demo fleet.
pub fn check_demo_fleet(c: &Controller, all: &Value) {
    let cas = c.json(&["inventory", "cas"]);
    let cas = cas.as_array().unwrap();
    let inventory_cas: BTreeSet<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["is_ca"] == true)
        .map(|i| i["fingerprint_sha256"].as_str().unwrap())
        .collect();
    let listed: BTreeSet<&str> = cas
        .iter()
        .map(|f| f["fingerprint_sha256"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed, inventory_cas,
        "every CA in the inventory, and only those"
    );

    // Soonest cliff first; each cliff is the not-after minus the leaf lifetime.
    let mut last = i64::MIN;
    for f in cas {
        let cliff = parse_time(f["cliff"].as_str().unwrap()).unwrap();
        let na = parse_time(f["not_after"].as_str().unwrap()).unwrap();
        assert_eq!(
            cliff,
            na - f["leaf_lifetime_days"].as_i64().unwrap() * DAY,
            "{f:#}"
        );
        assert!(cliff >= last, "not sorted by cliff");
        last = cliff;
    }

    // The VMCA root of vcsa-01 caps Machine SSL and the solution users at 5-year ESXi lifetimes.
    let vmca = cas
        .iter()
        .find(|f| f["role"] == "vsphere.vmca_root")
        .unwrap_or_else(|| panic!("no VMCA root in {cas:#?}"));
    assert_eq!(vmca["leaf_lifetime_days"], 1825);
    let vmca_leaf_roles: BTreeSet<&str> = vmca["leaves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["role"].as_str().unwrap())
        .collect();
    assert!(
        vmca_leaf_roles.contains("vsphere.machine_ssl"),
        "{vmca_leaf_roles:?}"
    );
    assert!(
        vmca["agents"]
            .as_array()
            .unwrap()
            .contains(&"vcsa-01".into())
    );

    // The oVirt engine CA (seen on the engine and, as their CA copy, on every host) signs the
    // three hosts' VDSM certificates; oVirt leaves get 1827 days.
    let vdsm_leaves = |f: &Value| {
        f["leaves"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["role"] == "ovirt.node.vdsm")
            .count()
    };
    let engine = cas
        .iter()
        .find(|f| f["platform"] == "ovirt" && vdsm_leaves(f) == 3)
        .unwrap_or_else(|| panic!("no oVirt CA capping the three VDSM certificates: {cas:#?}"));
    assert_eq!(engine["leaf_lifetime_days"], 1827);

    // The GKE user cluster whose CA expires in 20 days is past its cliff.
    let gke_past = cas.iter().any(|f| {
        f["platform"] == "gke" && f["status"] == "past-cliff" && f["days_left"].as_i64() < Some(30)
    });
    assert!(gke_past, "{cas:#?}");

    // The table names the same CAs.
    let table = c.cli(&["inventory", "cas"]);
    assert!(
        table.contains("CLIFF") && table.contains("past-cliff"),
        "{table}"
    );

    // One gauge per CA (fleet CA included).
    let metrics = c.metrics();
    let cliffs: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("certfleet_ca_cliff_seconds{"))
        .collect();
    assert_eq!(cliffs.len(), listed.len() + 1, "{metrics}");
    let vmca_cliff = parse_time(vmca["cliff"].as_str().unwrap()).unwrap();
    assert!(
        cliffs
            .iter()
            .any(|l| l.contains("role=\"vsphere.vmca_root\"")
                && l.ends_with(&format!(" {vmca_cliff}"))),
        "{cliffs:#?}"
    );
    assert!(
        cliffs
            .iter()
            .any(|l| l.contains("role=\"certfleet.fleet_ca\"")),
        "{cliffs:#?}"
    );
}

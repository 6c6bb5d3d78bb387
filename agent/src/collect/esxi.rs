//! ESXi host certificates, collected by the agent on the VCSA through vCenter's API.
//!
//! No agent runs on ESXi. For every host vCenter manages this collector reports the
//! certificate vCenter holds for it (`HostSystem.config.certificate`, location kind
//! `vcenter`, path = host name) and the one the host's own TLS endpoint serves (kind
//! `endpoint`), so the scan's stale-endpoint check shows "renewed but still serving the old
//! one". Host state (cluster, connection, maintenance mode) and vCenter's certificate mode
//! (`vpxd.certmgmt.mode`, `vpxd.certmgmt.certs.daysValid`) are health facts, and so is
//! vCenter's own auto-renew when its settings show it ([`super::renewers::vcenter_auto_renew`]).
//!
//! Settings: `esxi.vim_url` (enables the collector, e.g. `https://localhost/sdk`),
//! `esxi.vim_user`, `esxi.vim_password_file` (host path), `esxi.vim_ca_file` (host path of the
//! VMCA root / CA bundle vCenter's certificate chains to), `esxi.endpoint_port` (default 443)
//! and `esxi.endpoint.<host name>` (an explicit `address:port` for one host).
//!
//! The `vcenter` location's detail carries the host's facts ([`host_facts`]) so the controller
//! can plan `esxi-hosts` waves per cluster and say why a host is left out.

use std::time::Duration;

use certfleet_common::model::{HealthFact, Location, Problem};

use super::{Collection, Collector};
use crate::config::AgentConfig;
use crate::vim::{Session, VimSettings};

/// The `esxi` collector.
pub struct Esxi;

const NAME: &str = "esxi";

/// Role of an ESXi host certificate.
pub const ROLE: &str = "vsphere.esxi_host";

/// vCenter settings for the vim25 client, from the agent's `esxi.*` settings.
pub fn vim_settings(cfg: &AgentConfig) -> Result<VimSettings, String> {
    let url = cfg
        .setting("esxi.vim_url")
        .ok_or("esxi.vim_url is not set")?
        .to_owned();
    let user = cfg
        .setting("esxi.vim_user")
        .ok_or("esxi.vim_user is not set")?
        .to_owned();
    let pw = cfg
        .setting("esxi.vim_password_file")
        .ok_or("esxi.vim_password_file is not set")?;
    Ok(VimSettings {
        url,
        user,
        password_file: cfg.host_path(pw),
        ca_file: cfg.setting("esxi.vim_ca_file").map(|p| cfg.host_path(p)),
        timeout: cfg.tool_timeout.min(Duration::from_secs(30)),
    })
}

/// Address of a host's own TLS endpoint.
pub fn endpoint_of(cfg: &AgentConfig, host: &str) -> String {
    if let Some(a) = cfg.setting(&format!("esxi.endpoint.{host}")) {
        return a.to_owned();
    }
    let port = cfg.setting("esxi.endpoint_port").unwrap_or("443");
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The facts the `esxi-hosts` recipe plans from, as the `detail` of a host certificate's
/// `vcenter` location: `HostSystem <moref> config.certificate; cluster=…; connection=…;
/// maintenance=…; ha=…; vsan=…; mode=…`, then the collector adds `esxi-hosts=<verdict>`
/// ([`crate::act::esxi::verdict`]). Values never contain `;` or `=`.
pub fn host_facts(h: &crate::vim::HostInfo, mode: &str) -> String {
    let clean = |v: &str| v.replace([';', '='], "_");
    format!(
        "HostSystem {} config.certificate; cluster={}; connection={}; maintenance={}; ha={}; vsan={}; mode={}",
        h.moref.value,
        clean(&h.cluster),
        clean(&h.connection_state),
        h.in_maintenance_mode,
        clean(&h.ha_state),
        h.vsan_enabled,
        clean(mode)
    )
}

impl Collector for Esxi {
    fn name(&self) -> &'static str {
        NAME
    }

    fn detect(&self, cfg: &AgentConfig) -> bool {
        cfg.setting("esxi.vim_url").is_some()
    }

    fn collect(&self, cfg: &AgentConfig, out: &mut Collection) {
        let settings = match vim_settings(cfg) {
            Ok(s) => s,
            Err(e) => return out.problem(Problem::error(NAME, "agent settings", e)),
        };
        let session = match Session::login(&settings) {
            Ok(s) => s,
            Err(e) => return out.problem(Problem::error(NAME, &settings.url, e.to_string())),
        };
        match session.options("vpxd.certmgmt.") {
            Ok(opts) => {
                let get = |k: &str| {
                    opts.iter()
                        .find(|o| o.key == k)
                        .map(|o| o.value.clone())
                        .unwrap_or_default()
                };
                let mode = get("vpxd.certmgmt.mode");
                out.health.push(HealthFact {
                    kind: "esxi.certmgmt".into(),
                    subject: settings.url.clone(),
                    state: if mode.is_empty() {
                        "vmca".into()
                    } else {
                        mode.clone()
                    },
                    detail: format!(
                        "vpxd.certmgmt.mode={} vpxd.certmgmt.certs.daysValid={}",
                        if mode.is_empty() {
                            "(default vmca)"
                        } else {
                            &mode
                        },
                        get("vpxd.certmgmt.certs.daysValid")
                    ),
                    healthy: true,
                });
                // vCenter renewing ESXi / Machine SSL certificates by itself.
                let kv: Vec<(String, String)> = opts
                    .iter()
                    .map(|o| (o.key.clone(), o.value.clone()))
                    .collect();
                for (role, _, detail) in super::renewers::vcenter_auto_renew(&kv) {
                    out.health.push(HealthFact {
                        kind: super::renewers::FACT.into(),
                        subject: role.into(),
                        state: "vcenter-auto-renew".into(),
                        detail,
                        healthy: true,
                    });
                }
            }
            Err(e) => out.problem(Problem::error(NAME, &settings.url, e.to_string())),
        }
        let hosts = match session.hosts() {
            Ok(h) => h,
            Err(e) => {
                out.problem(Problem::error(NAME, &settings.url, e.to_string()));
                return session.logout();
            }
        };
        let mode = out
            .health
            .iter()
            .find(|f| f.kind == "esxi.certmgmt")
            .map(|f| f.state.clone())
            .unwrap_or_default();
        let now = certfleet_common::model::now();
        let vmca = crate::act::esxi::vmca_issuers(cfg);
        for h in &hosts {
            let connected = h.connection_state == "connected";
            out.health.push(HealthFact {
                kind: "esxi.host".into(),
                subject: h.name.clone(),
                state: if h.in_maintenance_mode {
                    format!("{} (maintenance mode)", h.connection_state)
                } else {
                    h.connection_state.clone()
                },
                detail: format!(
                    "cluster {}; moref {}",
                    if h.cluster.is_empty() {
                        "(standalone)"
                    } else {
                        &h.cluster
                    },
                    h.moref.value
                ),
                healthy: connected && !h.in_maintenance_mode,
            });
            if h.certificate.is_empty() {
                out.problem(Problem::warning(
                    NAME,
                    format!("{} config.certificate", h.name),
                    format!(
                        "vCenter holds no certificate for the host ({})",
                        h.connection_state
                    ),
                ));
            } else {
                let mut loc = Location::file("vcenter", h.name.clone());
                let v = crate::act::esxi::verdict(h, &hosts, &mode, &vmca, now);
                loc.detail = format!("{}; esxi-hosts={}", host_facts(h, &mode), v.as_text());
                out.add_blob(NAME, &h.certificate, ROLE, loc);
            }
            let addr = endpoint_of(cfg, &h.name);
            match super::endpoint::probe(
                &addr,
                &h.name,
                settings.timeout.min(Duration::from_secs(10)),
            ) {
                Ok(chain) if !chain.is_empty() => {
                    let mut loc = Location::file("endpoint", addr.clone());
                    loc.detail = format!("ESXi host {}", h.name);
                    out.add_der(NAME, &chain[0], ROLE, loc);
                }
                Ok(_) => {}
                Err(e) => out.problem(Problem::warning(NAME, addr, e)),
            }
        }
        session.logout();
    }
}

//! ESXi host certificate actions (`esxi.*`), run by the agent on the VCSA through vCenter's
//! SOAP API ([`crate::vim`]); no agent runs on the hosts.
//!
//! | action | does |
//! |---|---|
//! | `esxi.refresh_hosts` | one wave of one cluster: re-reads every host of the wave from vCenter and decides again ([`verdict`]) — a host that became unsafe since planning is skipped with its reason, not failed; an expired host is disconnected and reconnected with the SHA-1 thumbprint it serves now (`HostConnectSpec.sslThumbprint`); then one `CertMgrRefreshCertificates_Task` per host, all started before any is awaited (the wave runs side by side in vCenter), each task polled (`info.state`) to its end; then each host verified: `config.certificate` differs from the certificate noted before the call, the host's own TLS endpoint serves exactly it, and it is valid now; then `CertMgrRefreshCACertificatesAndCRLs_Task` for the hosts whose new certificate has another issuing root than the old one. Failed hosts count against the plan's budget (`max_failures`, carried from wave to wave in `failures`): the step fails only when the budget is exceeded |
//!
//! Which hosts are safe to refresh is decided here only ([`verdict`]): the collector writes the
//! verdict into the inventory so the controller plans from it, and the action applies it again
//! at run time. Rules (the vSAN and HA ones are this project's reading of the vim25 API, not
//! checked against a real cluster): vCenter in `custom` or `thumbprint` mode, a host in
//! maintenance mode, a disconnected host, a host not responding with a certificate that has
//! not expired, a host whose HA agent (`runtime.dasHostState.state`) is neither `master` nor
//! `connectedToMaster`, a vSAN member whose cluster has another vSAN member disconnected, not
//! responding or in maintenance mode (its objects may be resyncing), a vSAN member whose
//! cluster's members report objects resyncing (`QuerySyncingVsanObjects`, see
//! [`crate::vim::HostInfo::vsan_syncing`]) or whose own question failed — skipped; a host whose
//! certificate has expired and is not disconnected by an operator — emergency path.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{ActContext, ActError};
use crate::vim::{HostInfo, MoRef, Session};

/// What to do with one host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Connected, out of maintenance, nothing unsafe: `CertMgrRefreshCertificates_Task`.
    Refresh,
    /// Certificate expired: disconnect, reconnect accepting the served thumbprint, refresh.
    Emergency,
    /// Left alone, and why.
    Skip(String),
}

impl Verdict {
    /// `refresh`, `emergency` or `skip: <reason>` (the form the inventory carries).
    pub fn as_text(&self) -> String {
        match self {
            Verdict::Refresh => "refresh".into(),
            Verdict::Emergency => "emergency".into(),
            Verdict::Skip(r) => format!("skip: {r}"),
        }
    }
}

/// The certificates VMCA issues host certificates with, as `(subject DN, subject key id)`:
/// those of `/var/lib/vmware/vmca/root.cer` on the VCSA (VMCA's signing certificate, a
/// subordinate's chain with it) and of the earlier roots VMCA keeps beside it after a root
/// change (`root.cer.0` … `root.cer.32`, `VMCABackupRootCAFiles` in lightwave vmca/common/
/// certutils.c): after "reset all" the hosts still hold certificates of the old root, which
/// VMCA issued and a refresh must replace. Else those of `esxi.vim_ca_file` (the CA bundle
/// vCenter's certificate chains to). Empty when none can be read: no host is then taken for
/// custom.
pub fn vmca_issuers(cfg: &crate::config::AgentConfig) -> Vec<(String, String)> {
    let root = cfg.host_path("/var/lib/vmware/vmca/root.cer");
    let earlier = (0..=32).map(|n| std::path::PathBuf::from(format!("{}.{n}", root.display())));
    let ids = |paths: &mut dyn Iterator<Item = std::path::PathBuf>| -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for path in paths {
            let Ok(pem) = std::fs::read(&path) else {
                continue;
            };
            for der in certfleet_common::pem::certificates(&pem).unwrap_or_default() {
                if let Ok(c) = certfleet_common::x509::parse_der(&der)
                    && c.is_ca
                    && !out.iter().any(|(_, ski)| *ski == c.subject_key_id)
                {
                    out.push((c.subject, c.subject_key_id));
                }
            }
        }
        out
    };
    let vmca = ids(&mut std::iter::once(root.clone()).chain(earlier));
    if !vmca.is_empty() {
        return vmca;
    }
    ids(&mut cfg
        .setting("esxi.vim_ca_file")
        .map(|p| cfg.host_path(p))
        .into_iter())
}

/// The issuer DN of `h`'s certificate when one of `vmca` did not issue it (matched by the
/// authority key id, else by the issuer DN); `None` when VMCA issued it or nothing is known.
pub fn custom_issuer(h: &HostInfo, vmca: &[(String, String)]) -> Option<String> {
    if vmca.is_empty() {
        return None;
    }
    let der = certfleet_common::pem::first_certificate(&h.certificate).ok()?;
    let c = certfleet_common::x509::parse_der(&der).ok()?;
    let by_vmca = vmca.iter().any(|(subject, ski)| {
        if !c.authority_key_id.is_empty() && !ski.is_empty() {
            c.authority_key_id.eq_ignore_ascii_case(ski)
        } else {
            c.issuer == *subject
        }
    });
    (!by_vmca).then_some(c.issuer)
}

/// Whether the certificate vCenter holds for `h` expired before `now` (no certificate: no).
pub fn expired(h: &HostInfo, now: i64) -> bool {
    certfleet_common::pem::first_certificate(&h.certificate)
        .ok()
        .and_then(|der| certfleet_common::x509::parse_der(&der).ok())
        .is_some_and(|c| c.not_after < now)
}

/// The decision for host `h` of vCenter in certificate `mode`, with `peers` every host vCenter
/// manages (its cluster's hosts among them) and `vmca` the issuers of VMCA ([`vmca_issuers`]):
/// in `vmca` mode a host whose certificate another CA issued (installed by hand) is left
/// alone, since a refresh would replace it with a VMCA one.
pub fn verdict(
    h: &HostInfo,
    peers: &[HostInfo],
    mode: &str,
    vmca: &[(String, String)],
    now: i64,
) -> Verdict {
    let skip = |r: String| Verdict::Skip(r);
    match mode {
        "custom" => {
            return skip(
                "vCenter is in custom mode (vpxd.certmgmt.mode=custom): host certificates come from an external CA, not VMCA".into(),
            );
        }
        "thumbprint" => {
            return skip(
                "vCenter is in thumbprint mode (vpxd.certmgmt.mode=thumbprint): it does not manage host certificates".into(),
            );
        }
        _ => {}
    }
    if let Some(issuer) = custom_issuer(h, vmca) {
        return skip(format!(
            "custom certificate (issued by {issuer}, not by this vCenter's VMCA): a refresh \
             would replace it with a VMCA one; renew it with its own CA"
        ));
    }
    if h.in_maintenance_mode {
        return skip(
            "in maintenance mode (vCenter refreshes only hosts out of maintenance)".into(),
        );
    }
    let is_expired = expired(h, now);
    match h.connection_state.as_str() {
        "disconnected" => {
            return skip(format!(
                "disconnected{} (reconnect it first)",
                if is_expired {
                    ", certificate expired"
                } else {
                    ""
                }
            ));
        }
        _ if is_expired => return Verdict::Emergency,
        "connected" => {}
        other => {
            return skip(format!(
                "{other} with a certificate that has not expired (not a certificate problem)"
            ));
        }
    }
    if !h.ha_state.is_empty() && !matches!(h.ha_state.as_str(), "master" | "connectedToMaster") {
        return skip(format!(
            "vSphere HA agent state {} (HA cannot protect its VMs while the refresh restarts the host's agents)",
            h.ha_state
        ));
    }
    if h.vsan_enabled && !h.cluster.is_empty() {
        let degraded: Vec<String> = peers
            .iter()
            .filter(|p| p.cluster == h.cluster && p.moref != h.moref && p.vsan_enabled)
            .filter(|p| p.connection_state != "connected" || p.in_maintenance_mode)
            .map(|p| {
                if p.in_maintenance_mode {
                    format!("{} in maintenance mode", p.name)
                } else {
                    format!("{} {}", p.name, p.connection_state)
                }
            })
            .collect();
        if !degraded.is_empty() {
            return skip(format!(
                "vSAN cluster {} is degraded ({}): its objects may be resyncing",
                h.cluster,
                degraded.join(", ")
            ));
        }
        let members = || {
            peers
                .iter()
                .filter(|p| p.cluster == h.cluster && p.vsan_enabled)
        };
        let syncing: Vec<String> = members()
            .filter_map(|p| match &p.vsan_syncing {
                Some(Ok(n)) if *n > 0 => Some(format!("{} reports {n} object(s)", p.name)),
                _ => None,
            })
            .collect();
        if !syncing.is_empty() {
            return skip(format!(
                "vSAN cluster {} is resyncing objects ({}): a refresh restarts the host's agents; wait until the resync ends",
                h.cluster,
                syncing.join(", ")
            ));
        }
        if let Some(Err(e)) = &h.vsan_syncing
            && !members().any(|p| matches!(p.vsan_syncing, Some(Ok(_))))
        {
            return skip(format!(
                "cannot tell whether vSAN cluster {} is resyncing: {e}",
                h.cluster
            ));
        }
    }
    Verdict::Refresh
}

/// `AA:BB:…`: SHA-1 of a certificate as vCenter writes host thumbprints.
pub fn sha1_thumbprint(der: &[u8]) -> String {
    let hex = certfleet_common::pki::sha1_hex(der).to_ascii_uppercase();
    hex.as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(":")
}

/// Runs `action`.
pub fn dispatch(action: &str, ctx: &ActContext<'_>, args: &Value) -> Result<Value, ActError> {
    match action {
        "esxi.refresh_hosts" => refresh_hosts(ctx, args),
        other => Err(ActError(format!(
            "unknown ESXi action {other:?} (this agent is version {})",
            env!("CARGO_PKG_VERSION")
        ))),
    }
}

/// A host of the wave as the plan names it.
struct Planned {
    name: String,
    moref: String,
    /// Authority key id (else issuer) of the certificate the plan saw: a new certificate from
    /// another root needs the CA refresh.
    old_root: String,
}

fn planned(args: &Value) -> Result<Vec<Planned>, ActError> {
    let hosts = args
        .get("hosts")
        .and_then(Value::as_array)
        .ok_or_else(|| ActError::new("missing array argument \"hosts\""))?;
    hosts
        .iter()
        .map(|h| {
            let s = |k: &str| {
                h.get(k)
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .ok_or_else(|| ActError(format!("hosts[]: missing string {k:?} in {h}")))
            };
            Ok(Planned {
                name: s("name")?,
                moref: s("moref")?,
                old_root: h
                    .get("old_root")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
            })
        })
        .collect()
}

/// A host the plan leaves alone, with the reason it was planned so.
struct Skipped {
    name: String,
    moref: String,
    reason: String,
}

fn skipped(args: &Value) -> Vec<Skipped> {
    args.get("skip")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|h| {
                    let s = |k: &str| h.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
                    Skipped {
                        name: s("name"),
                        moref: s("moref"),
                        reason: s("reason"),
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

fn num(args: &Value, name: &str, default: u64) -> u64 {
    args.get(name).and_then(Value::as_u64).unwrap_or(default)
}

/// The root a certificate chains to, as far as one certificate tells: its authority key id,
/// else its issuer name.
fn root_of(der: &[u8]) -> String {
    match certfleet_common::x509::parse_der(der) {
        Ok(c) if !c.authority_key_id.is_empty() => c.authority_key_id,
        Ok(c) => c.issuer,
        Err(_) => String::new(),
    }
}

fn der_of(h: &HostInfo) -> Option<Vec<u8>> {
    certfleet_common::pem::first_certificate(&h.certificate).ok()
}

fn fingerprint(h: &HostInfo) -> String {
    der_of(h)
        .map(|d| certfleet_common::pki::sha256_hex(&d))
        .unwrap_or_default()
}

/// What the host's own TLS endpoint serves (leaf DER).
fn served(ctx: &ActContext<'_>, name: &str) -> Result<Vec<u8>, String> {
    let addr = crate::collect::esxi::endpoint_of(ctx.cfg, name);
    let chain = crate::collect::endpoint::probe(&addr, name, Duration::from_secs(10))
        .map_err(|e| format!("{addr}: {e}"))?;
    chain
        .into_iter()
        .next()
        .ok_or_else(|| format!("{addr}: no certificate presented"))
}

/// `esxi.refresh_hosts`: one wave (see the module table).
///
/// Idempotent and resumable: before any refresh it notes (intent journal, first writer wins)
/// the fingerprint each host serves, and right after vCenter accepted the refresh, the task it
/// started for that host. A re-sent step whose host already serves a certificate other than
/// the noted one, identical to vCenter's `config.certificate`, valid now, does not refresh it
/// again and goes straight to verification; one whose host has a noted task waits for that
/// task (still running in vCenter after the agent died) instead of starting a second refresh,
/// then verifies. The request itself is noted before the call: a re-sent step whose host was
/// asked for but has no noted task (the agent died between vCenter's answer and the note)
/// waits, as long as a refresh task may run (`task_timeout_secs`), for the certificate that refresh brings before
/// asking again, so a second refresh happens only when the first brought nothing in that
/// time. Disconnect and reconnect happen only
/// for a host whose certificate is still expired; the CA refresh pushes the same roots again
/// at most (no effect). Nothing on the VCSA's disk changes.
fn refresh_hosts(ctx: &ActContext<'_>, args: &Value) -> Result<Value, ActError> {
    let wave = planned(args)?;
    let cluster = args.get("cluster").and_then(Value::as_str).unwrap_or("");
    let max_failures = num(args, "max_failures", 0);
    let failures_before = num(args, "failures", 0);
    let task_timeout = Duration::from_secs(num(args, "task_timeout_secs", 600));
    let verify_timeout = Duration::from_secs(num(args, "verify_timeout_secs", 120));
    let poll = Duration::from_millis(num(args, "poll_ms", 1000));
    let settings = crate::collect::esxi::vim_settings(ctx.cfg)
        .map_err(|e| ActError(format!("agent settings: {e}")))?;
    let s = Session::login(&settings).map_err(|e| ActError(e.to_string()))?;
    let skips = skipped(args);
    let result = run_wave(
        ctx,
        &s,
        &wave,
        &skips,
        cluster,
        task_timeout,
        verify_timeout,
        poll,
    );
    s.logout();
    let outcome = result?;
    let failures = failures_before + outcome.failed.len() as u64;
    let canary = args.get("canary").and_then(Value::as_bool).unwrap_or(false);
    let mut message = format!(
        "{cluster}: refreshed {}",
        if outcome.refreshed.is_empty() {
            "none".into()
        } else {
            outcome
                .refreshed
                .iter()
                .map(|r| r["host"].as_str().unwrap_or("").to_owned())
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    for sk in &outcome.skipped {
        message.push_str(&format!(
            "; skipped {}: {}",
            sk["host"].as_str().unwrap_or(""),
            sk["reason"].as_str().unwrap_or("")
        ));
    }
    for f in &outcome.failed {
        message.push_str(&format!(
            "; FAILED {}: {}",
            f["host"].as_str().unwrap_or(""),
            f["error"].as_str().unwrap_or("")
        ));
    }
    if canary && !outcome.failed.is_empty() {
        return Err(ActError(format!(
            "{message}; the canary failed: the plan stops before any other host"
        )));
    }
    if failures > max_failures {
        return Err(ActError(format!(
            "{message}; {failures} failed host(s) in this plan exceed max_failures={max_failures}"
        )));
    }
    Ok(json!({
        "message": message,
        "refreshed": outcome.refreshed,
        "skipped": outcome.skipped,
        "failed": outcome.failed,
        "failures": failures,
    }))
}

#[derive(Default)]
struct WaveOutcome {
    refreshed: Vec<Value>,
    skipped: Vec<Value>,
    failed: Vec<Value>,
}

#[allow(clippy::too_many_arguments)]
fn run_wave(
    ctx: &ActContext<'_>,
    s: &Session,
    wave: &[Planned],
    wave_skips: &[Skipped],
    cluster: &str,
    task_timeout: Duration,
    verify_timeout: Duration,
    poll: Duration,
) -> Result<WaveOutcome, ActError> {
    let out = |l: String| (ctx.output)(l);
    let vim = |e: crate::vim::VimError| ActError(e.to_string());
    let mode = s
        .options("vpxd.certmgmt.mode")
        .map_err(vim)?
        .into_iter()
        .find(|o| o.key == "vpxd.certmgmt.mode")
        .map(|o| o.value)
        .unwrap_or_else(|| "vmca".into());
    let all = s.hosts().map_err(vim)?;
    let vmca = vmca_issuers(ctx.cfg);
    let now = certfleet_common::model::now();
    let mut res = WaveOutcome::default();
    // Hosts the plan leaves alone: their state now, for the record.
    for sk in wave_skips {
        let reason = match all.iter().find(|h| h.moref.value == sk.moref) {
            None => format!("{} (vCenter no longer has {})", sk.reason, sk.moref),
            Some(h) => match verdict(h, &all, &mode, &vmca, now) {
                Verdict::Skip(now_reason) => now_reason,
                v => format!(
                    "{} when planned; now {}: not in this plan, plan again to include it",
                    sk.reason,
                    v.as_text()
                ),
            },
        };
        out(format!("{}: left alone: {reason}", sk.name));
        res.skipped.push(json!({"host": sk.name, "reason": reason}));
    }
    // Hosts to refresh: (plan entry, vCenter's view, certificate noted before any effect).
    let mut go: Vec<(&Planned, MoRef, String)> = Vec::new();
    for p in wave {
        let Some(h) = all.iter().find(|h| h.moref.value == p.moref) else {
            res.failed.push(
                json!({"host": p.name, "error": format!("vCenter has no HostSystem {}", p.moref)}),
            );
            continue;
        };
        let key = format!("before:{}", p.moref);
        // On a re-sent step: did an earlier attempt already refresh this host?
        if let Some(noted) = ctx.noted(&key).and_then(|v| v.as_str().map(str::to_owned)) {
            let served_now = served(ctx, &p.name).ok();
            let served_fp = served_now
                .as_deref()
                .map(certfleet_common::pki::sha256_hex)
                .unwrap_or_default();
            if !served_fp.is_empty() && served_fp != noted && served_fp == fingerprint(h) {
                out(format!(
                    "{}: already serves {} (noted before the call: {noted}); not refreshing again",
                    p.name,
                    &served_fp[..16]
                ));
                go.push((p, h.moref.clone(), noted));
                continue;
            }
            if let Some(task) = noted_task(ctx, &p.moref) {
                out(format!(
                    "{}: the interrupted attempt started {}; waiting for it, not refreshing again",
                    p.name, task.value
                ));
                go.push((p, h.moref.clone(), noted));
                continue;
            }
        }
        let v = verdict(h, &all, &mode, &vmca, now);
        out(format!("{}: {}", p.name, v.as_text()));
        match v {
            Verdict::Skip(reason) => {
                res.skipped.push(json!({"host": p.name, "reason": reason}));
                continue;
            }
            Verdict::Emergency => {
                if let Err(e) = reconnect(ctx, s, h, task_timeout, poll) {
                    res.failed.push(json!({"host": p.name, "error": e}));
                    continue;
                }
            }
            Verdict::Refresh => {}
        }
        let before = served(ctx, &p.name)
            .map(|d| certfleet_common::pki::sha256_hex(&d))
            .unwrap_or_else(|_| fingerprint(h));
        ctx.note(&key, json!(before))?;
        let noted = ctx
            .noted(&key)
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or(before);
        go.push((p, h.moref.clone(), noted));
    }
    // Start every refresh of the wave, then wait for each.
    let mut tasks: Vec<(&Planned, MoRef, String, Option<MoRef>)> = Vec::new();
    for (p, moref, noted) in go {
        let already = served(ctx, &p.name)
            .map(|d| certfleet_common::pki::sha256_hex(&d))
            .is_ok_and(|fp| fp != noted);
        if already {
            tasks.push((p, moref, noted, None));
            continue;
        }
        if let Some(t) = noted_task(ctx, &p.moref) {
            tasks.push((p, moref, noted, Some(t)));
            continue;
        }
        // The interrupted attempt asked vCenter to refresh this host and died before it noted
        // the task: the refresh may still be running there. Wait for its certificate (as long
        // as a refresh task may run) before asking a second time.
        let requested = format!("requested:{}", p.moref);
        if ctx.resumed() && ctx.noted(&requested).is_some() {
            out(format!(
                "{}: the interrupted attempt asked vCenter to refresh it and stopped before \
                 noting the task; waiting up to {}s for the new certificate before asking again",
                p.name,
                task_timeout.as_secs()
            ));
            match renewed_in_vcenter(s, p, &noted, task_timeout, poll) {
                Ok(()) => {
                    out(format!(
                        "{}: vCenter holds a new certificate: the earlier request did it; not \
                         asking again",
                        p.name
                    ));
                    tasks.push((p, moref, noted, None));
                    continue;
                }
                Err(e) => out(format!("{}: {e}; asking vCenter again", p.name)),
            }
        }
        ctx.note(&requested, json!(certfleet_common::model::now()))?;
        match s.refresh_certificates(std::slice::from_ref(&moref)) {
            Ok(t) => {
                ctx.crash_point("after-refresh-call");
                out(format!(
                    "{}: CertMgrRefreshCertificates_Task {} started",
                    p.name, t.value
                ));
                ctx.note(&format!("task:{}", p.moref), json!(t.value))?;
                tasks.push((p, moref, noted, Some(t)));
            }
            Err(e) => res
                .failed
                .push(json!({"host": p.name, "error": e.to_string()})),
        }
    }
    ctx.crash_point("after-refresh-started");
    let mut verified: Vec<(&Planned, MoRef, Vec<u8>)> = Vec::new();
    for (p, moref, noted, task) in tasks {
        if let Some(t) = task
            && let Err(e) = s.wait_task(&t, "CertMgrRefreshCertificates_Task", poll, task_timeout)
        {
            res.failed
                .push(json!({"host": p.name, "error": e.to_string()}));
            continue;
        }
        match verify(ctx, s, p, &noted, verify_timeout, poll) {
            Ok(der) => verified.push((p, moref, der)),
            Err(e) => res.failed.push(json!({"host": p.name, "error": e})),
        }
    }
    // New root: push vCenter's trusted roots and CRLs to the hosts that need them.
    let rooted: Vec<&(&Planned, MoRef, Vec<u8>)> = verified
        .iter()
        .filter(|(p, _, der)| !p.old_root.is_empty() && root_of(der) != p.old_root)
        .collect();
    let mut ca_failed = String::new();
    if !rooted.is_empty() {
        let refs: Vec<MoRef> = rooted.iter().map(|(_, m, _)| m.clone()).collect();
        let names: Vec<&str> = rooted.iter().map(|(p, _, _)| p.name.as_str()).collect();
        out(format!(
            "{}: issued by another root than before; CertMgrRefreshCACertificatesAndCRLs_Task",
            names.join(", ")
        ));
        if let Err(e) = s.refresh_ca_certificates(&refs).and_then(|t| {
            s.wait_task(
                &t,
                "CertMgrRefreshCACertificatesAndCRLs_Task",
                poll,
                task_timeout,
            )
        }) {
            ca_failed = e.to_string();
        }
    }
    for (p, _, der) in &verified {
        let c = certfleet_common::x509::parse_der(der).map_err(|e| ActError(e.0.clone()))?;
        let ca = !p.old_root.is_empty() && root_of(der) != p.old_root;
        if ca && !ca_failed.is_empty() {
            res.failed.push(json!({"host": p.name, "error": format!("new certificate in place, CA refresh failed: {ca_failed}")}));
            continue;
        }
        res.refreshed.push(json!({
            "host": p.name,
            "cluster": cluster,
            "fingerprint_sha256": c.fingerprint_sha256,
            "not_after": c.not_after,
            "ca_refreshed": ca,
        }));
    }
    Ok(res)
}

/// The refresh task an earlier attempt of this step started for host `moref`, if it noted one.
fn noted_task(ctx: &ActContext<'_>, moref: &str) -> Option<MoRef> {
    ctx.noted(&format!("task:{moref}"))
        .and_then(|v| v.as_str().map(str::to_owned))
        .map(|value| MoRef {
            kind: "Task".into(),
            value,
        })
}

/// Disconnects (unless already) and reconnects `h`, accepting the certificate it serves now.
fn reconnect(
    ctx: &ActContext<'_>,
    s: &Session,
    h: &HostInfo,
    timeout: Duration,
    poll: Duration,
) -> Result<(), String> {
    let der = served(ctx, &h.name)?;
    let thumb = sha1_thumbprint(&der);
    if h.connection_state != "disconnected" {
        let t = s.disconnect_host(&h.moref).map_err(|e| e.to_string())?;
        s.wait_task(&t, "DisconnectHost_Task", poll, timeout)
            .map_err(|e| e.to_string())?;
        (ctx.output)(format!("{}: disconnected ({})", h.name, t.value));
    }
    let t = s
        .reconnect_host(&h.moref, Some(&thumb))
        .map_err(|e| e.to_string())?;
    s.wait_task(&t, "ReconnectHost_Task", poll, timeout)
        .map_err(|e| e.to_string())?;
    (ctx.output)(format!(
        "{}: reconnected accepting thumbprint {thumb} ({})",
        h.name, t.value
    ));
    Ok(())
}

/// The certificate vCenter holds for host `p` now (`config.certificate`, read afresh).
fn vcenter_certificate(s: &Session, p: &Planned) -> Result<Option<Vec<u8>>, String> {
    let hosts = s.hosts().map_err(|e| e.to_string())?;
    let h = hosts
        .iter()
        .find(|h| h.moref.value == p.moref)
        .ok_or_else(|| format!("vCenter has no HostSystem {}", p.moref))?;
    Ok(der_of(h))
}

/// Waits until vCenter's `config.certificate` for the host is another than `noted` (a refresh
/// took effect there; whether the host serves it is [`verify`]'s question).
fn renewed_in_vcenter(
    s: &Session,
    p: &Planned,
    noted: &str,
    timeout: Duration,
    poll: Duration,
) -> Result<(), String> {
    let start = Instant::now();
    loop {
        if vcenter_certificate(s, p)?
            .is_some_and(|d| certfleet_common::pki::sha256_hex(&d) != noted)
        {
            return Ok(());
        }
        if start.elapsed() >= timeout {
            return Err(format!(
                "config.certificate is still the old certificate after {}s",
                start.elapsed().as_secs()
            ));
        }
        std::thread::sleep(poll);
    }
}

/// Waits until vCenter holds a certificate other than `noted` for the host, the host's
/// endpoint serves exactly it, and it is valid now; returns its DER.
fn verify(
    ctx: &ActContext<'_>,
    s: &Session,
    p: &Planned,
    noted: &str,
    timeout: Duration,
    poll: Duration,
) -> Result<Vec<u8>, String> {
    let start = Instant::now();
    loop {
        let vc = vcenter_certificate(s, p)?.ok_or("vCenter holds no certificate for the host")?;
        let vc_fp = certfleet_common::pki::sha256_hex(&vc);
        let served = served(ctx, &p.name)?;
        let served_fp = certfleet_common::pki::sha256_hex(&served);
        let problem = if vc_fp == noted {
            Some("config.certificate is still the old certificate".to_owned())
        } else if served_fp != vc_fp {
            Some(format!(
                "renewed in vCenter ({}) but the host still serves {}",
                &vc_fp[..16],
                &served_fp[..16]
            ))
        } else {
            let c = certfleet_common::x509::parse_der(&served).map_err(|e| e.0)?;
            let now = certfleet_common::model::now();
            (c.not_before > now + 300 || c.not_after <= now).then(|| {
                format!(
                    "the new certificate is not valid now ({} – {})",
                    certfleet_common::model::format_time(c.not_before),
                    certfleet_common::model::format_time(c.not_after)
                )
            })
        };
        match problem {
            None => {
                (ctx.output)(format!(
                    "{}: verified: endpoint and config.certificate serve {}",
                    p.name,
                    &served_fp[..16]
                ));
                return Ok(served);
            }
            Some(e) if start.elapsed() >= timeout => {
                return Err(format!("{e} after {}s", start.elapsed().as_secs()));
            }
            Some(_) => std::thread::sleep(poll),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, cluster: &str, state: &str) -> HostInfo {
        HostInfo {
            moref: MoRef {
                kind: "HostSystem".into(),
                value: name.into(),
            },
            name: name.into(),
            cluster: cluster.into(),
            connection_state: state.into(),
            in_maintenance_mode: false,
            certificate: Vec::new(),
            ha_state: String::new(),
            vsan_enabled: false,
            vsan_internal_system: None,
            vsan_syncing: None,
        }
    }

    fn with_cert(mut h: HostInfo, days: i64) -> HostInfo {
        let mut p = rcgen::CertificateParams::new(vec![h.name.clone()]).unwrap();
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::days(400);
        p.not_after = now + time::Duration::days(days);
        let k = rcgen::KeyPair::generate().unwrap();
        h.certificate = p.self_signed(&k).unwrap().pem().into_bytes();
        h
    }

    /// A host certificate issued by `ca`.
    fn issued_by(mut h: HostInfo, ca: &rcgen::Issuer<'_, rcgen::KeyPair>) -> HostInfo {
        let mut p = rcgen::CertificateParams::new(vec![h.name.clone()]).unwrap();
        // As VMCA does: the authority key id names the issuing root's key.
        p.use_authority_key_identifier_extension = true;
        let k = rcgen::KeyPair::generate().unwrap();
        h.certificate = p.signed_by(&k, ca).unwrap().pem().into_bytes();
        h
    }

    /// A self-signed CA: its certificate and an issuer for it.
    fn ca(cn: &str) -> (rcgen::Certificate, rcgen::Issuer<'static, rcgen::KeyPair>) {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_identifier_method = rcgen::KeyIdMethod::Sha256;
        let k = rcgen::KeyPair::generate().unwrap();
        let cert = p.self_signed(&k).unwrap();
        (cert, rcgen::Issuer::new(p, k))
    }

    #[test]
    fn a_host_certificate_vmca_did_not_issue_is_left_alone_in_vmca_mode() {
        let now = certfleet_common::model::now();
        let (vmca, vmca_issuer) = ca("CA");
        let (_, corp_issuer) = ca("Corp Issuing CA");
        let ids: Vec<(String, String)> = [&vmca]
            .iter()
            .map(|c| {
                let r = certfleet_common::x509::parse_der(c.der()).unwrap();
                (r.subject, r.subject_key_id)
            })
            .collect();
        let by_vmca = issued_by(host("h0", "C0", "connected"), &vmca_issuer);
        let custom = issued_by(host("h1", "C0", "connected"), &corp_issuer);
        let all = vec![by_vmca.clone(), custom.clone()];
        assert_eq!(verdict(&by_vmca, &all, "vmca", &ids, now), Verdict::Refresh);
        match verdict(&custom, &all, "vmca", &ids, now) {
            Verdict::Skip(r) => assert!(
                r.starts_with("custom certificate (issued by CN=Corp Issuing CA"),
                "{r}"
            ),
            v => panic!("{v:?}"),
        }
        // Nothing known about VMCA: no host is taken for custom.
        assert_eq!(verdict(&custom, &all, "vmca", &[], now), Verdict::Refresh);
    }

    #[test]
    fn after_reset_all_hosts_of_the_old_vmca_root_are_still_vmca_issued() {
        let now = certfleet_common::model::now();
        let dir = tempfile::tempdir().unwrap();
        let (old, old_issuer) = ca("CA");
        let (new, _) = ca("CA");
        let (_, corp_issuer) = ca("Corp Issuing CA");
        let vmca = dir.path().join("var/lib/vmware/vmca");
        std::fs::create_dir_all(&vmca).unwrap();
        std::fs::write(vmca.join("root.cer"), new.pem()).unwrap();
        std::fs::write(vmca.join("root.cer.0"), old.pem()).unwrap();
        let cfg = crate::config::AgentConfig {
            root: dir.path().to_owned(),
            ..Default::default()
        };
        let ids = vmca_issuers(&cfg);
        assert_eq!(ids.len(), 2, "{ids:?}");
        let h = issued_by(host("h0", "C0", "connected"), &old_issuer);
        let custom = issued_by(host("h1", "C0", "connected"), &corp_issuer);
        let all = vec![h.clone(), custom.clone()];
        assert_eq!(verdict(&h, &all, "vmca", &ids, now), Verdict::Refresh);
        assert!(matches!(
            verdict(&custom, &all, "vmca", &ids, now),
            Verdict::Skip(_)
        ));
        // Without VMCA's copy of the old root (same subject, another key), the host would be
        // taken for custom.
        std::fs::remove_file(vmca.join("root.cer.0")).unwrap();
        let ids = vmca_issuers(&cfg);
        assert!(matches!(
            verdict(&h, &all, "vmca", &ids, now),
            Verdict::Skip(_)
        ));
    }

    #[test]
    fn verdicts_follow_mode_state_ha_and_vsan() {
        let now = certfleet_common::model::now();
        let ok = with_cert(host("h0", "C0", "connected"), 100);
        let all = vec![ok.clone()];
        assert_eq!(verdict(&ok, &all, "vmca", &[], now), Verdict::Refresh);
        assert!(
            matches!(verdict(&ok, &all, "custom", &[], now), Verdict::Skip(r) if r.contains("custom"))
        );
        assert!(matches!(
            verdict(&ok, &all, "thumbprint", &[], now),
            Verdict::Skip(_)
        ));
        let mut mm = ok.clone();
        mm.in_maintenance_mode = true;
        assert!(
            matches!(verdict(&mm, &all, "vmca", &[], now), Verdict::Skip(r) if r.contains("maintenance"))
        );
        let gone = with_cert(host("h1", "C0", "disconnected"), -2);
        assert!(
            matches!(verdict(&gone, &all, "vmca", &[], now), Verdict::Skip(r) if r.starts_with("disconnected, certificate expired"))
        );
        let dead = with_cert(host("h2", "C0", "notResponding"), -2);
        assert_eq!(verdict(&dead, &all, "vmca", &[], now), Verdict::Emergency);
        let flaky = with_cert(host("h3", "C0", "notResponding"), 30);
        assert!(
            matches!(verdict(&flaky, &all, "vmca", &[], now), Verdict::Skip(r) if r.contains("not expired"))
        );
        let mut isolated = ok.clone();
        isolated.ha_state = "networkIsolated".into();
        assert!(
            matches!(verdict(&isolated, &all, "vmca", &[], now), Verdict::Skip(r) if r.contains("networkIsolated"))
        );
        isolated.ha_state = "connectedToMaster".into();
        assert_eq!(verdict(&isolated, &all, "vmca", &[], now), Verdict::Refresh);
        // vSAN: a member whose peer is in maintenance mode waits; a peer elsewhere does not count.
        let mut a = ok.clone();
        a.vsan_enabled = true;
        let mut b = with_cert(host("hb", "C0", "connected"), 100);
        b.vsan_enabled = true;
        b.in_maintenance_mode = true;
        let mut c = with_cert(host("hc", "C1", "disconnected"), 100);
        c.vsan_enabled = true;
        let peers = vec![a.clone(), b.clone(), c.clone()];
        assert!(
            matches!(verdict(&a, &peers, "vmca", &[], now), Verdict::Skip(r) if r.contains("hb in maintenance mode") && !r.contains("hc"))
        );
        b.in_maintenance_mode = false;
        assert_eq!(
            verdict(&a, &[a.clone(), b.clone(), c.clone()], "vmca", &[], now),
            Verdict::Refresh
        );
    }

    /// vSAN resync: any member of the cluster reporting objects resyncing holds every member
    /// back; a failed question holds back only when no member answered.
    #[test]
    fn a_resyncing_vsan_cluster_waits() {
        let now = certfleet_common::model::now();
        let member = |name: &str, cluster: &str, syncing: Option<Result<u64, String>>| {
            let mut h = with_cert(host(name, cluster, "connected"), 100);
            h.vsan_enabled = true;
            h.vsan_syncing = syncing;
            h
        };
        let a = member("ha", "C0", Some(Ok(0)));
        let b = member("hb", "C0", Some(Ok(3)));
        let other = member("hc", "C1", Some(Ok(7)));
        let peers = vec![a.clone(), b.clone(), other.clone()];
        for h in [&a, &b] {
            assert!(
                matches!(verdict(h, &peers, "vmca", &[], now), Verdict::Skip(r)
                    if r.starts_with("vSAN cluster C0 is resyncing objects (hb reports 3 object(s))")),
                "{:?}",
                verdict(h, &peers, "vmca", &[], now)
            );
        }
        let calm = vec![a.clone(), member("hb", "C0", Some(Ok(0))), other];
        assert_eq!(verdict(&a, &calm, "vmca", &[], now), Verdict::Refresh);
        let unknown = member("hu", "C2", Some(Err("HTTP 500".into())));
        assert!(
            matches!(verdict(&unknown, std::slice::from_ref(&unknown), "vmca", &[], now), Verdict::Skip(r)
                if r.contains("cannot tell whether vSAN cluster C2 is resyncing: HTTP 500"))
        );
        let answered = member("hv", "C2", Some(Ok(0)));
        assert_eq!(
            verdict(&unknown, &[unknown.clone(), answered], "vmca", &[], now),
            Verdict::Refresh
        );
    }

    #[test]
    fn thumbprints_are_colon_separated_upper_sha1() {
        let t = sha1_thumbprint(b"abc");
        assert_eq!(
            t,
            "A9:99:3E:36:47:06:81:6A:BA:3E:25:71:78:50:C2:6C:9C:D0:D8:9D"
        );
    }
}

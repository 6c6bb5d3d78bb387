//! Pins: whatever trusts a certificate by its thumbprint or by a copy of it, and breaks when the
//! certificate changes (issue 13, "what pins a certificate").
//!
//! Two kinds are reported with every inventory scan, each tied to the certificate it should
//! match (by role, compared by SHA-1 thumbprint or SHA-256 fingerprint) and in one of three
//! states, `match`, `stale` or `unknown`:
//!
//! * discovered ones, where the agent can read them: on a vCenter, VCDB `vpx_ext` extension
//!   thumbprints and Lookup Service registrations' SSL trust ([`crate::collect::vsphere_pins`]);
//! * declared ones, for consumers the agent cannot look into (backup tools, monitoring
//!   adapters, NSX's compute manager): `[[pins]]` in the agent configuration.
//!
//! A declared pin names its certificate (`cert_role` or `cert_path`), says how to read what the
//! consumer pins (`read_command`, an absolute program and its arguments printing a thumbprint,
//! a fingerprint or a PEM certificate; or a fixed `thumbprint`), and optionally how to re-trust
//! it after a change (`retrust_command`, an absolute program and its arguments, run without a
//! shell, given the new certificate's PEM on standard input and `CERTFLEET_PIN`,
//! `CERTFLEET_CERT_SHA256`, `CERTFLEET_CERT_SHA1` in its environment), or a `retrust_webhook`
//! the certificate is POSTed to as JSON ([`crate::webhook`]: `https://` verified against
//! `webhook_ca_file`, or `http://` to loopback; a bearer token from `webhook_token_file`).
//! Commands run as written, not under the configured root: they are the operator's own tools.
//!
//! Example:
//! ```toml
//! [[pins]]
//! name = "backup-appliance"
//! cert_role = "vsphere.machine_ssl"
//! read_command = ["/usr/local/bin/backup-cli", "vcenter", "thumbprint"]
//! retrust_command = ["/usr/local/bin/backup-cli", "vcenter", "trust", "--pem-stdin"]
//!
//! [[pins]]
//! name = "nsx-compute-manager"
//! cert_role = "vsphere.machine_ssl"
//! read_command = ["/usr/local/bin/nsx-cm-thumbprint"]
//! retrust_webhook = "https://nsx-helper.lab.local/api/v1/trust"
//! webhook_ca_file = "/etc/certfleet/nsx-helper-ca.pem"
//! webhook_token_file = "/etc/certfleet/nsx-helper.token"
//! ```
//!
//! The controller adds a `pins.retrust` step after the steps that change a declared pin's
//! certificate (see `controller/src/pins.rs`); the step re-trusts and reads the pin again.

use std::path::Path;

use certfleet_common::model::{CertRecord, Pin, Problem, pin_state};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::act::{ActContext, ActError};
use crate::collect::Collection;
use crate::config::AgentConfig;

/// Errors of declared pins; each names the pin and the command or file.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// Reading what the consumer pins failed.
    #[error("pin {pin}: reading what it pins: {source}")]
    Read {
        /// Pin name.
        pin: String,
        /// Cause.
        #[source]
        source: crate::exec::ToolError,
    },
    /// What the consumer printed is no thumbprint, fingerprint or certificate.
    #[error("pin {pin}: {what}: {reason}")]
    Unreadable {
        /// Pin name.
        pin: String,
        /// The command or setting read.
        what: String,
        /// Why.
        reason: String,
    },
    /// The certificate the pin should match cannot be found.
    #[error("pin {pin}: {reason}")]
    NoCertificate {
        /// Pin name.
        pin: String,
        /// Why.
        reason: String,
    },
    /// The re-trust command failed.
    #[error("pin {pin}: re-trust failed: {source}")]
    Retrust {
        /// Pin name.
        pin: String,
        /// Cause (command line, exit code, output).
        #[source]
        source: crate::exec::ToolError,
    },
}

/// One `[[pins]]` entry of the agent configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinDecl {
    /// Unique name (shown in `certfleet inventory show`).
    pub name: String,
    /// Role of the certificate it pins (`vsphere.machine_ssl`, …). One of this and `cert_path`.
    #[serde(default)]
    pub cert_role: Option<String>,
    /// Host path of the certificate file it pins (under the root).
    #[serde(default)]
    pub cert_path: Option<String>,
    /// Absolute program and arguments printing what the consumer pins.
    #[serde(default)]
    pub read_command: Vec<String>,
    /// What the consumer pins, when it cannot be read (SHA-1 or SHA-256, hex, `:` optional).
    #[serde(default)]
    pub thumbprint: Option<String>,
    /// Absolute program and arguments that make the consumer trust the current certificate.
    #[serde(default)]
    pub retrust_command: Vec<String>,
    /// URL the certificate is POSTed to instead (JSON, see [`retrust`]); one of this and
    /// `retrust_command`.
    #[serde(default)]
    pub retrust_webhook: Option<String>,
    /// Host path of the CA bundle an `https://` webhook's server is verified against.
    #[serde(default)]
    pub webhook_ca_file: Option<String>,
    /// Host path of a file holding a bearer token for the webhook (mode 0600 or stricter).
    #[serde(default)]
    pub webhook_token_file: Option<String>,
}

/// Keys of a `[[pins]]` entry (for `check-config`'s unknown-key report).
pub const DECL_KEYS: &[&str] = &[
    "name",
    "cert_role",
    "cert_path",
    "read_command",
    "thumbprint",
    "retrust_command",
    "retrust_webhook",
    "webhook_ca_file",
    "webhook_token_file",
];

/// Everything wrong with the `[[pins]]` entries, all at once.
pub fn problems(decls: &[PinDecl]) -> Vec<String> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, d) in decls.iter().enumerate() {
        let at = format!("pins[{i}] ({})", d.name);
        if d.name.trim().is_empty() {
            out.push(format!("pins[{i}]: name is empty"));
        } else if !seen.insert(d.name.as_str()) {
            out.push(format!("{at}: name is used by an earlier pin"));
        }
        match (&d.cert_role, &d.cert_path) {
            (None, None) => out.push(format!("{at}: set cert_role or cert_path")),
            (Some(_), Some(_)) => out.push(format!("{at}: both cert_role and cert_path; keep one")),
            (_, Some(p)) if !p.starts_with('/') => out.push(format!(
                "{at}: cert_path {p:?} must be an absolute host path"
            )),
            _ => {}
        }
        match (d.read_command.is_empty(), &d.thumbprint) {
            (true, None) => out.push(format!(
                "{at}: set read_command (prints what the consumer pins) or thumbprint"
            )),
            (false, Some(_)) => {
                out.push(format!("{at}: both read_command and thumbprint; keep one"))
            }
            (true, Some(t)) => {
                if let Err(e) = Pinned::parse(t) {
                    out.push(format!("{at}: thumbprint: {e}"));
                }
            }
            _ => {}
        }
        for (key, cmd) in [
            ("read_command", &d.read_command),
            ("retrust_command", &d.retrust_command),
        ] {
            if let Some(p) = cmd.first()
                && !p.starts_with('/')
            {
                out.push(format!(
                    "{at}: {key}: program {p:?} must be an absolute path (no shell, no PATH lookup)"
                ));
            }
        }
        if !d.retrust_command.is_empty() && d.read_command.is_empty() {
            out.push(format!(
                "{at}: retrust_command needs read_command, to verify the re-trust by reading the pin again"
            ));
        }
        if let Some(url) = &d.retrust_webhook {
            if !d.retrust_command.is_empty() {
                out.push(format!(
                    "{at}: both retrust_command and retrust_webhook; keep one"
                ));
            }
            if d.read_command.is_empty() {
                out.push(format!(
                    "{at}: retrust_webhook needs read_command, to verify the re-trust by reading the pin again"
                ));
            }
            if let Err(e) = crate::webhook::check_url(url, d.webhook_ca_file.as_deref()) {
                out.push(format!("{at}: retrust_webhook {e}"));
            }
        } else if d.webhook_ca_file.is_some() || d.webhook_token_file.is_some() {
            out.push(format!(
                "{at}: webhook_ca_file / webhook_token_file without retrust_webhook"
            ));
        }
        for (key, path) in [
            ("webhook_ca_file", &d.webhook_ca_file),
            ("webhook_token_file", &d.webhook_token_file),
        ] {
            if let Some(p) = path
                && !p.starts_with('/')
            {
                out.push(format!("{at}: {key} {p:?} must be an absolute host path"));
            }
        }
    }
    out
}

/// What a consumer pins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pinned {
    /// A SHA-1 thumbprint (vCenter's `AA:BB:…`).
    Sha1(Vec<u8>),
    /// A SHA-256 fingerprint.
    Sha256(Vec<u8>),
}

impl Pinned {
    /// Parses what a consumer prints: a PEM certificate (its SHA-256 is taken), or a SHA-1 or
    /// SHA-256 digest in hex, with or without `:`, optionally after `…Fingerprint=` as
    /// `openssl x509 -fingerprint` prints it. Only the first non-empty line counts for digests.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.contains("-----BEGIN CERTIFICATE-----") {
            let ders = certfleet_common::pem::certificates(text.as_bytes())
                .map_err(|e| format!("PEM certificate: {e}"))?;
            let der = ders.first().ok_or("no certificate in the PEM text")?;
            return Ok(Pinned::Sha256(digest(&ring::digest::SHA256, der)));
        }
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .ok_or("empty: no thumbprint, fingerprint or PEM certificate")?;
        let value = line.rsplit('=').next().unwrap_or(line);
        let hex_text: String = value
            .chars()
            .filter(|c| *c != ':' && !c.is_whitespace())
            .collect();
        let bytes = hex::decode(&hex_text).map_err(|_| {
            format!(
                "{:?} is neither a hex SHA-1/SHA-256 digest nor a PEM certificate",
                shorten(line)
            )
        })?;
        match bytes.len() {
            20 => Ok(Pinned::Sha1(bytes)),
            32 => Ok(Pinned::Sha256(bytes)),
            n => Err(format!(
                "{:?}: {n} bytes; a SHA-1 thumbprint has 20, a SHA-256 fingerprint 32",
                shorten(line)
            )),
        }
    }

    /// Whether this pins the certificate `der`.
    pub fn matches(&self, der: &[u8]) -> bool {
        match self {
            Pinned::Sha1(d) => *d == digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, der),
            Pinned::Sha256(d) => *d == digest(&ring::digest::SHA256, der),
        }
    }

    /// As shown: SHA-1 the way vCenter stores it (`AA:BB:…`), SHA-256 as certfleet shows
    /// fingerprints (lowercase hex).
    pub fn shown(&self) -> String {
        match self {
            Pinned::Sha1(d) => sha1_colons(d),
            Pinned::Sha256(d) => hex::encode(d),
        }
    }
}

fn shorten(s: &str) -> String {
    s.chars().take(80).collect()
}

fn digest(alg: &'static ring::digest::Algorithm, der: &[u8]) -> Vec<u8> {
    ring::digest::digest(alg, der).as_ref().to_vec()
}

fn sha1_colons(d: &[u8]) -> String {
    d.iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// SHA-1 thumbprint of `der` as vCenter stores it (`AA:BB:…`, uppercase).
pub fn thumbprint(der: &[u8]) -> String {
    sha1_colons(&digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, der))
}

/// The certificate with `role` in a scan: the one the host holds (a store or file), before one
/// an endpoint serves.
pub fn cert_by_role(out: &Collection, role: &str) -> Option<CertRecord> {
    let mut found: Vec<CertRecord> = out.certificates().filter(|c| c.role == role).collect();
    found.sort_by_key(|c| c.locations.iter().all(|l| l.kind == "endpoint"));
    found.into_iter().next()
}

/// The certificate a declared pin should match, with its role.
fn declared_cert(cfg: &AgentConfig, out: &Collection, d: &PinDecl) -> Result<CertRecord, PinError> {
    let no = |reason: String| PinError::NoCertificate {
        pin: d.name.clone(),
        reason,
    };
    if let Some(role) = &d.cert_role {
        return cert_by_role(out, role)
            .ok_or_else(|| no(format!("no certificate with role {role} on this host")));
    }
    let path = d.cert_path.as_deref().unwrap_or_default();
    let bytes = crate::collect::read_small_file(&cfg.host_path(path))
        .map_err(|e| no(format!("cert_path {path}: {e}")))?;
    let der = certfleet_common::pem::certificates(&bytes)
        .ok()
        .and_then(|v| v.into_iter().next())
        .unwrap_or(bytes);
    let mut rec = certfleet_common::x509::parse_der(&der)
        .map_err(|e| no(format!("cert_path {path}: {e}")))?;
    rec.role = out
        .get(&rec.fingerprint_sha256)
        .map(|c| c.role.clone())
        .unwrap_or_else(|| "file".into());
    rec.der = der;
    Ok(rec)
}

/// Reads what the consumer of `d` pins now.
fn read_pinned(cfg: &AgentConfig, d: &PinDecl) -> Result<Pinned, PinError> {
    if let Some(t) = &d.thumbprint {
        return Pinned::parse(t).map_err(|reason| PinError::Unreadable {
            pin: d.name.clone(),
            what: "thumbprint".into(),
            reason,
        });
    }
    let (program, args) = d
        .read_command
        .split_first()
        .unwrap_or((&d.read_command[0], &[]));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = crate::exec::run_ok(Path::new(program), &args, None, cfg.tool_timeout).map_err(
        |source| PinError::Read {
            pin: d.name.clone(),
            source,
        },
    )?;
    Pinned::parse(&out.stdout).map_err(|reason| PinError::Unreadable {
        pin: d.name.clone(),
        what: crate::exec::command_line(Path::new(program), &args),
        reason,
    })
}

/// Compares a declared pin with its certificate.
fn declared_pin(cfg: &AgentConfig, out: &Collection, d: &PinDecl) -> Pin {
    let mut pin = Pin {
        source: "declared".into(),
        name: d.name.clone(),
        cert_role: d.cert_role.clone().unwrap_or_default(),
        retrust: if d.retrust_webhook.is_some() {
            "webhook".into()
        } else if d.retrust_command.is_empty() {
            String::new()
        } else {
            "command".into()
        },
        ..Pin::default()
    };
    let cert = match declared_cert(cfg, out, d) {
        Ok(c) => c,
        Err(e) => {
            pin.state = pin_state::UNKNOWN.into();
            pin.detail = e.to_string();
            return pin;
        }
    };
    pin.cert_role = cert.role.clone();
    pin.cert_fingerprint = cert.fingerprint_sha256.clone();
    match read_pinned(cfg, d) {
        Ok(p) => {
            pin.pinned = p.shown();
            if p.matches(&cert.der) {
                pin.state = pin_state::MATCH.into();
            } else {
                pin.state = pin_state::STALE.into();
                pin.detail = format!(
                    "pins {} but the host holds {} ({})",
                    p.shown(),
                    &cert.fingerprint_sha256,
                    cert.role
                );
            }
        }
        Err(e) => {
            pin.state = pin_state::UNKNOWN.into();
            pin.detail = e.to_string();
        }
    }
    pin
}

/// Adds the pins to a finished scan: discovered ones for the platforms that ran, then the
/// declared ones. Failures to read become `unknown` pins or problems, never a failed scan.
pub fn evaluate(cfg: &AgentConfig, out: &mut Collection) {
    let mut pins = Vec::new();
    if out.platforms.iter().any(|p| p == "vsphere") {
        let (found, problems) = crate::collect::vsphere_pins::discover(cfg, out);
        pins.extend(found);
        for p in problems {
            out.problem(p);
        }
    }
    for d in &cfg.pins {
        let pin = declared_pin(cfg, out, d);
        if pin.state == pin_state::UNKNOWN {
            tracing::warn!(pin = %pin.name, detail = %pin.detail, "declared pin unreadable");
        }
        pins.push(pin);
    }
    out.pins = pins;
}

/// Problem helper for the discovery modules.
pub fn problem(subject: impl Into<String>, message: impl Into<String>) -> Problem {
    Problem::warning("pins", subject, message)
}

/// Routes the `pins.*` actions.
pub fn dispatch(action: &str, ctx: &ActContext<'_>, args: &Value) -> Result<Value, ActError> {
    match action {
        "pins.retrust" => retrust(ctx, args),
        other => Err(ActError(format!("unknown action {other:?}"))),
    }
}

/// `pins.retrust {"name": N}`: runs the declared pin's `retrust_command` with the certificate
/// the host holds now (or POSTs it to its `retrust_webhook`: a JSON object with `pin`,
/// `cert_role`, `fingerprint_sha256`, `thumbprint_sha1`, `not_after` and `pem`, a bearer token
/// from `webhook_token_file` when set; any 2xx status is success), then reads the pin again
/// and fails unless it matches.
///
/// Idempotent: it looks at the host first (a fresh scan finds the current certificate) and
/// hands that certificate over again; a consumer that already trusts it is given the same one,
/// and the step succeeds only when reading the pin back shows it. Nothing is backed up: the
/// consumer's old trust is the old certificate, which the certificate's own step backed up.
fn retrust(ctx: &ActContext<'_>, args: &Value) -> Result<Value, ActError> {
    let name = crate::act::arg_str(args, "name")?;
    let d = ctx
        .cfg
        .pins
        .iter()
        .find(|d| d.name == name)
        .ok_or_else(|| {
            ActError(format!(
                "pin {name:?} is not declared in this agent's configuration ([[pins]]: {})",
                ctx.cfg
                    .pins
                    .iter()
                    .map(|d| d.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
    if d.retrust_command.is_empty() && d.retrust_webhook.is_none() {
        return Err(ActError(format!(
            "pin {name}: no retrust_command or retrust_webhook declared; re-trust it by hand"
        )));
    }
    let scan = crate::collect::scan(ctx.cfg);
    let cert = declared_cert(ctx.cfg, &scan, d).map_err(|e| ActError(e.to_string()))?;
    let pem = certfleet_common::pem::encode("CERTIFICATE", &cert.der);
    let sha1 = thumbprint(&cert.der);
    match (&d.retrust_webhook, d.retrust_command.split_first()) {
        (Some(url), _) => call_webhook(ctx, d, url, &cert, &pem, &sha1)?,
        (None, Some((program, rest))) => {
            run_retrust_command(ctx, name, program, rest, &cert, &pem, &sha1)?
        }
        (None, None) => unreachable!("checked above"),
    }
    let now = read_pinned(ctx.cfg, d).map_err(|e| ActError(e.to_string()))?;
    if !now.matches(&cert.der) {
        return Err(ActError(format!(
            "pin {name}: re-trust {} succeeded but the pin still reads {} (expected {} / {})",
            if d.retrust_webhook.is_some() {
                "webhook"
            } else {
                "command"
            },
            now.shown(),
            sha1,
            cert.fingerprint_sha256
        )));
    }
    tracing::info!(pin = name, fingerprint = %cert.fingerprint_sha256, "pin re-trusted");
    Ok(json!({
        "message": format!("pin {name} re-trusted: it now pins {} ({})", now.shown(), cert.role),
        "pin": name,
        "fingerprint": cert.fingerprint_sha256,
    }))
}

/// POSTs the certificate to the pin's webhook; a non-2xx answer is an error naming the status
/// and the start of the body.
fn call_webhook(
    ctx: &ActContext<'_>,
    d: &PinDecl,
    url: &str,
    cert: &CertRecord,
    pem: &str,
    sha1: &str,
) -> Result<(), ActError> {
    let name = d.name.as_str();
    let token = match &d.webhook_token_file {
        None => None,
        Some(rel) => Some(
            ctx.cfg
                .read_secret_file("webhook_token_file", rel)
                .map_err(|e| ActError(format!("pin {name}: {e}")))?
                .trim()
                .to_owned(),
        ),
    };
    let ca = d.webhook_ca_file.as_deref().map(|p| ctx.cfg.host_path(p));
    (ctx.output)(format!(
        "POST {url}  (certificate {} of role {})",
        cert.fingerprint_sha256, cert.role
    ));
    let body = json!({
        "pin": name,
        "cert_role": cert.role,
        "fingerprint_sha256": cert.fingerprint_sha256,
        "thumbprint_sha1": sha1,
        "not_after": certfleet_common::model::format_time(cert.not_after),
        "pem": pem,
    });
    let answer =
        crate::webhook::post_json(url, ca.as_deref(), token.as_deref(), &body, ctx.timeout)
            .map_err(|e| ActError(format!("pin {name}: re-trust webhook: {e}")))?;
    (ctx.output)(format!("HTTP {}", answer.status));
    for line in answer.body.lines().take(20) {
        (ctx.output)(line.to_owned());
    }
    if !(200..300).contains(&answer.status) {
        return Err(ActError(format!(
            "pin {name}: re-trust webhook {url} answered HTTP {}: {}",
            answer.status,
            answer.body.lines().next().unwrap_or("")
        )));
    }
    Ok(())
}

/// Runs the pin's `retrust_command` with the PEM on standard input.
fn run_retrust_command(
    ctx: &ActContext<'_>,
    name: &str,
    program: &str,
    rest: &[String],
    cert: &CertRecord,
    pem: &str,
    sha1: &str,
) -> Result<(), ActError> {
    let argv: Vec<&str> = rest.iter().map(String::as_str).collect();
    (ctx.output)(format!(
        "$ {}  (stdin: certificate {} of role {})",
        crate::exec::command_line(Path::new(program), &argv),
        cert.fingerprint_sha256,
        cert.role
    ));
    let out = crate::exec::run_ok_in(
        Path::new(program),
        &argv,
        Some(pem.as_bytes()),
        ctx.timeout,
        None,
        &[
            ("CERTFLEET_PIN", name),
            ("CERTFLEET_CERT_SHA256", &cert.fingerprint_sha256),
            ("CERTFLEET_CERT_SHA1", sha1),
        ],
    )
    .map_err(|source| {
        ActError(
            PinError::Retrust {
                pin: name.to_owned(),
                source,
            }
            .to_string(),
        )
    })?;
    for line in out.stdout.lines().chain(out.stderr.lines()).take(20) {
        (ctx.output)(line.to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decl(toml_text: &str) -> Vec<PinDecl> {
        #[derive(Deserialize)]
        struct F {
            pins: Vec<PinDecl>,
        }
        toml::from_str::<F>(toml_text).unwrap().pins
    }

    #[test]
    fn pinned_values_in_the_forms_consumers_print() {
        let der = rcgen::generate_simple_self_signed(vec!["vc.lab".into()])
            .unwrap()
            .cert
            .der()
            .to_vec();
        let tp = thumbprint(&der);
        let fp = certfleet_common::pki::sha256_hex(&der);
        for text in [
            tp.clone(),
            tp.to_lowercase().replace(':', ""),
            format!("SHA1 Fingerprint={tp}\n"),
            format!("\n  {fp}  \n"),
            format!("sha256 Fingerprint={}", fp.to_uppercase()),
            certfleet_common::pem::encode("CERTIFICATE", &der),
        ] {
            let p = Pinned::parse(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert!(p.matches(&der), "{text:?}");
        }
        let other = rcgen::generate_simple_self_signed(vec!["x".into()])
            .unwrap()
            .cert
            .der()
            .to_vec();
        assert!(!Pinned::parse(&tp).unwrap().matches(&other));
        assert_eq!(Pinned::parse(&tp).unwrap().shown(), tp);
        for bad in ["", "hello", "AA:BB", "-----BEGIN CERTIFICATE-----\nxx"] {
            assert!(Pinned::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_declaration_problem_is_reported() {
        let d = decl(
            r#"
            [[pins]]
            name = "ok"
            cert_role = "vsphere.machine_ssl"
            read_command = ["/bin/cat", "/x"]
            retrust_command = ["/usr/bin/tee", "/x"]
            [[pins]]
            name = "ok"
            cert_role = "a"
            cert_path = "rel/path"
            thumbprint = "zz"
            [[pins]]
            name = "c"
            cert_path = "/etc/x.pem"
            read_command = ["cat", "/x"]
            thumbprint = "AA"
            [[pins]]
            name = "d"
            cert_path = "/etc/x.pem"
            thumbprint = "00112233445566778899AABBCCDDEEFF00112233"
            retrust_command = ["/bin/true"]
            [[pins]]
            name = ""
            [[pins]]
            name = "w1"
            cert_role = "vsphere.machine_ssl"
            read_command = ["/bin/cat", "/x"]
            retrust_command = ["/usr/bin/tee", "/x"]
            retrust_webhook = "https://nsx.lab/api/v1/trust"
            [[pins]]
            name = "w2"
            cert_role = "vsphere.machine_ssl"
            retrust_webhook = "http://nsx.lab/trust"
            webhook_token_file = "token"
            [[pins]]
            name = "w3"
            cert_role = "vsphere.machine_ssl"
            read_command = ["/bin/cat", "/x"]
            webhook_ca_file = "/etc/ca.pem"
            [[pins]]
            name = "w4"
            cert_role = "vsphere.machine_ssl"
            read_command = ["/bin/cat", "/x"]
            retrust_webhook = "https://nsx.lab/api/v1/trust"
            webhook_ca_file = "/etc/ssl/nsx-ca.pem"
            webhook_token_file = "/etc/certfleet/nsx.token"
            "#,
        );
        let p = problems(&d);
        let all = p.join("\n");
        for want in [
            "pins[1] (ok): name is used by an earlier pin",
            "pins[1] (ok): both cert_role and cert_path",
            "pins[1] (ok): thumbprint:",
            "pins[2] (c): both read_command and thumbprint",
            "pins[2] (c): read_command: program \"cat\" must be an absolute path",
            "pins[3] (d): retrust_command needs read_command",
            "pins[4]: name is empty",
            "pins[4] (): set cert_role or cert_path",
            "pins[4] (): set read_command",
            "pins[5] (w1): both retrust_command and retrust_webhook",
            "pins[5] (w1): retrust_webhook \"https://nsx.lab/api/v1/trust\": set webhook_ca_file",
            "pins[6] (w2): retrust_webhook needs read_command",
            "pins[6] (w2): retrust_webhook \"http://nsx.lab/trust\": http:// only to a loopback address",
            "pins[6] (w2): webhook_token_file \"token\" must be an absolute host path",
            "pins[7] (w3): webhook_ca_file / webhook_token_file without retrust_webhook",
        ] {
            assert!(all.contains(want), "missing {want:?} in:\n{all}");
        }
        assert!(!all.contains("pins[8]"), "{all}");
        assert!(!all.contains("pins[0]"), "{all}");
    }
}

//! The hosted-engine recovery's two halves as controller steps (recipe `ovirt-hosted-engine`):
//! the same code as `certfleet-agent recover ovirt-hosted-engine` by hand
//! ([`crate::recover::hosted_engine`]), with the CSR and the signed certificate travelling in
//! the step arguments and results instead of files the operator carries.
//!
//! | action | what |
//! |---|---|
//! | `ovirt.hosted_engine_start` | [`Local::hosted_engine_start`] (`way` = `dropin` or `clock`): the HostedEngine VM up with the expired VDSM certificate, then a CSR from `vdsmkey.pem`; returns `csr_pem` and `san` (never the key) |
//! | `ovirt.hosted_engine_finish` | [`Local::hosted_engine_finish`] with `cert_pem` (from the engine's `ovirt.enroll_request`): checked against the host, drop-ins removed, installed with backups, libvirtd with TLS and vdsmd restarted, verified |
//!
//! Both are resumed after an interrupted attempt ([`super::intent`]): each half is idempotent
//! by construction (see the doc comments below), so the controller re-sending the step after
//! the agent died runs it again safely. The CSR and the certificate are kept in the state
//! directory under the step's id (public material only).

use std::path::PathBuf;

use serde_json::{Value, json};

use super::{ActContext, ActError, arg_str};
use crate::recover::Local;
use crate::recover::hosted_engine::Way;

/// Routes `ovirt.hosted_engine_*`.
pub fn dispatch(action: &str, ctx: &ActContext<'_>, args: &Value) -> Result<Value, ActError> {
    match action {
        "ovirt.hosted_engine_start" => start(ctx, args),
        "ovirt.hosted_engine_finish" => finish(ctx, args),
        other => Err(ActError(format!(
            "unknown hosted-engine action {other:?} (this agent is version {})",
            env!("CARGO_PKG_VERSION")
        ))),
    }
}

/// Argument `way` (default `dropin`).
fn way(args: &Value) -> Result<Way, ActError> {
    match args.get("way").and_then(Value::as_str).unwrap_or("dropin") {
        "dropin" => Ok(Way::DropIn),
        "clock" => Ok(Way::Clock),
        other => Err(ActError(format!(
            "argument \"way\": {other:?} is neither dropin nor clock"
        ))),
    }
}

/// A file of this step in the state directory (`hosted-engine-<step>.<ext>`).
fn step_file(ctx: &ActContext<'_>, ext: &str) -> PathBuf {
    let id: String = ctx
        .step_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    ctx.state.path().join(format!("hosted-engine-{id}.{ext}"))
}

fn local<'a>(ctx: &'a ActContext<'a>) -> Local<'a> {
    Local {
        cfg: ctx.cfg,
        state: ctx.state,
        // Per tool: the step's own timeout covers the whole wait for the VM.
        timeout: ctx.timeout.min(std::time::Duration::from_secs(300)),
        out: ctx.output,
    }
}

/// First half: the HostedEngine VM up despite the expired VDSM certificate, and a CSR from
/// the host's key, returned as `csr_pem`.
///
/// Idempotent: [`Local::hosted_engine_start`] writes its drop-ins whole (same bytes on a
/// repeat), its restarts and `hosted-engine --vm-start` leave a running VM alone, a clock
/// change is journaled before it is made and undone on every way out or at the agent's next
/// start, and the CSR comes from a step answered from the journal on a repeat. A re-sent step
/// (agent killed before its result) therefore runs it again; a step that finished is answered
/// from the step journal by [`super::execute`].
fn start(ctx: &ActContext<'_>, args: &Value) -> Result<Value, ActError> {
    let way = way(args)?;
    let csr = step_file(ctx, "csr");
    let msg = local(ctx)
        .hosted_engine_start(way, &csr, false)
        .map_err(|e| ActError(format!("hosted-engine host, first half: {e}")))?;
    let csr_pem = std::fs::read_to_string(&csr)
        .map_err(|e| ActError(format!("{}: the CSR just written: {e}", csr.display())))?;
    tracing::info!(step = %ctx.step_id, csr = %csr.display(), "HostedEngine VM up, CSR made");
    Ok(json!({
        "message": msg.lines().next().unwrap_or("the HostedEngine VM is up"),
        "csr_pem": csr_pem,
    }))
}

/// Second half: `cert_pem` checked against the host (key, validity, chain) before anything
/// changes, the drop-ins removed, installed at every VDSM path with backups, libvirtd (with its
/// TLS listener) and vdsmd restarted, verified; the drop-ins put back when the install fails.
///
/// Idempotent: the certificate file is rewritten whole under the step's id; removing absent
/// drop-ins is a no-op; the install is a `cert.install` step whose id is derived from the
/// certificate's fingerprint, answered from the journal when it already happened (the
/// verification runs again), and resumed from its own backups when it was interrupted.
fn finish(ctx: &ActContext<'_>, args: &Value) -> Result<Value, ActError> {
    let way = way(args)?;
    let pem = arg_str(args, "cert_pem")?;
    let cer = step_file(ctx, "cer");
    certfleet_common::atomic::write_file(&cer, pem.as_bytes(), certfleet_common::atomic::PUBLIC)
        .map_err(|e| ActError(format!("{}: {e}", cer.display())))?;
    let msg = local(ctx)
        .hosted_engine_finish(way, &cer, false)
        .map_err(|e| ActError(format!("hosted-engine host, second half: {e}")))?;
    tracing::info!(step = %ctx.step_id, "hosted-engine host recovered");
    Ok(json!({ "message": msg }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn way_defaults_to_dropin_and_refuses_others_by_name() {
        assert_eq!(way(&json!({})).unwrap(), Way::DropIn);
        assert_eq!(way(&json!({"way": "clock"})).unwrap(), Way::Clock);
        let e = way(&json!({"way": "reboot"})).unwrap_err();
        assert!(e.0.contains("\"reboot\""), "{e}");
    }
}

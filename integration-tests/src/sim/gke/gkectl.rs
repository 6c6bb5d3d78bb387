//! Simulated `gkectl update credentials certificate-authorities status|rotate` (reference B2,
//! B3, B4).
//!
//! Output is verbatim where the reference quotes it: the `State of CARotation with CAVersion N
//! is -` block, the `successfully started the CA rotation …` line and the admission webhook
//! denial. Flag handling follows cobra/pflag (`--flag value`, `--flag=value`, `Error: unknown
//! flag: --x`, `Error: required flag(s) "config" not set`) and `GKECTL_KUBECONFIG` stands in
//! for `--kubeconfig` (reference B4). gkectl's own failures are printed as `Exit with
//! error:` followed by the message, exit code 1, as in the documented webhook denial.
//!
//! Steps of a rotation follow the phase list of B2 (an inference there, marked [L]); a rotation
//! started here advances one phase per `status` call, as the reference suggests for simulators.
//!
//! The admin cluster (non-advanced) rotates in the four steps of B3: `rotate --admin-cluster`
//! runs the first half synchronously (new CA `CAVersion N` added to every trust bundle; the API
//! server still serves from CA N-1 and accepts client certificates of both) and pauses;
//! `update-kubeconfig --admin-cluster` rewrites the given kubeconfig in place with CA data
//! `[old new]` and a client certificate from the new CA; `rotate --admin-cluster --complete`
//! refuses to proceed unless that updated kubeconfig is in the current directory, then
//! re-issues the control plane from CA N, revokes CA N-1 and reports the CA version; a second
//! `update-kubeconfig --admin-cluster` drops the old CA from the kubeconfig. Re-running a step
//! resumes it (B3: "an interrupted run can be resumed by re-running the same command"). Only the
//! verbs, flags, pause and kubeconfig semantics are documented; the progress lines printed here
//! are this simulator's wording [L]. User clusters' kubeconfigs (their own CAs) are not touched,
//! so user-cluster access through the admin cluster keeps working with the new admin
//! kubeconfig, and stops working with an old one. A full disk ([`super::set_disk_full`]) makes
//! the kubeconfig write stop half way with `no space left on device`, exit 1.

use std::io::Write as _;

use anyhow::Result;

use super::{Fault, GkeState, SimHost, Stage, kubeconfig as kcfg};
use crate::sim::{Lifetime, SimCa, dn};

/// Parsed flags of the `certificate-authorities` subcommands.
#[derive(Debug, Default)]
struct Flags {
    config: Option<String>,
    kubeconfig: Option<String>,
    admin_cluster: bool,
    complete: bool,
}

/// A cobra-level usage error (printed as `Error: …`).
fn usage_error(msg: &str, cmd: &str) -> i32 {
    eprintln!("Error: {msg}");
    eprintln!("Run '{cmd} --help' for usage.");
    1
}

/// A gkectl-level failure (printed as `Exit with error:` and the message).
fn exit_with_error(msg: &str) -> i32 {
    eprintln!("Exit with error:");
    eprintln!("{msg}");
    1
}

fn parse_flags(args: &[String]) -> Result<Flags, String> {
    let mut f = Flags::default();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        let Some(body) = a.strip_prefix("--") else {
            return Err(format!("unknown command {a:?}"));
        };
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (body, None),
        };
        match name {
            "config" | "kubeconfig" => {
                let v = match inline {
                    Some(v) => v,
                    None => {
                        i += 1;
                        args.get(i)
                            .cloned()
                            .ok_or_else(|| format!("flag needs an argument: --{name}"))?
                    }
                };
                if name == "config" {
                    f.config = Some(v);
                } else {
                    f.kubeconfig = Some(v);
                }
            }
            "admin-cluster" | "complete" => {
                let v = match inline.as_deref() {
                    None | Some("true") => true,
                    Some("false") => false,
                    Some(other) => {
                        return Err(format!(
                            "invalid argument {other:?} for \"--{name}\" flag: strconv.ParseBool: parsing {other:?}: invalid syntax"
                        ));
                    }
                };
                if name == "admin-cluster" {
                    f.admin_cluster = v;
                } else {
                    f.complete = v;
                }
            }
            _ => return Err(format!("unknown flag: --{name}")),
        }
        i += 1;
    }
    Ok(f)
}

/// Runs `gkectl ARGS`; returns the exit code.
pub fn run(host: &SimHost, args: &[String]) -> Result<i32> {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let (sub, rest) = match a.as_slice() {
        ["update", "credentials", "certificate-authorities", sub, ..] => (*sub, &args[4..]),
        [first, ..] => {
            return Ok(usage_error(
                &format!("unknown command {first:?} for \"gkectl\""),
                "gkectl",
            ));
        }
        [] => return Ok(usage_error("a subcommand is required", "gkectl")),
    };
    let cmd = format!("gkectl update credentials certificate-authorities {sub}");
    if !matches!(sub, "status" | "rotate" | "update-kubeconfig") {
        return Ok(usage_error(
            &format!(
                "unknown command {sub:?} for \"gkectl update credentials certificate-authorities\""
            ),
            &cmd,
        ));
    }
    let mut flags = match parse_flags(rest) {
        Ok(f) => f,
        Err(e) => return Ok(usage_error(&e, &cmd)),
    };
    if flags.kubeconfig.is_none() {
        flags.kubeconfig = std::env::var("GKECTL_KUBECONFIG")
            .ok()
            .filter(|v| !v.is_empty());
    }
    let Some(kubeconfig) = flags.kubeconfig.clone() else {
        return Ok(usage_error("required flag(s) \"kubeconfig\" not set", &cmd));
    };
    let Some(config) = flags.config.clone() else {
        return Ok(usage_error("required flag(s) \"config\" not set", &cmd));
    };
    if flags.complete && !(sub == "rotate" && flags.admin_cluster) {
        return Ok(exit_with_error(
            "--complete is only valid with rotate --admin-cluster",
        ));
    }
    if sub == "update-kubeconfig" && !flags.admin_cluster {
        return Ok(exit_with_error(
            "update-kubeconfig is only supported for the admin cluster (--admin-cluster); fetch a user cluster's new kubeconfig from its admin secret",
        ));
    }

    let mut state = GkeState::load(host)?;

    // Load the admin kubeconfig and check it really is the admin cluster's.
    let kc_text = match std::fs::read_to_string(&kubeconfig) {
        Ok(t) => t,
        Err(e) => {
            return Ok(exit_with_error(&format!(
                "failed to load kubeconfig {kubeconfig:?}: {}",
                go_io_error(&kubeconfig, &e)
            )));
        }
    };
    let Some(kc_ca) = super::kubeconfig::first_cluster_ca(&kc_text) else {
        return Ok(exit_with_error(&format!(
            "failed to load kubeconfig {kubeconfig:?}: no cluster with certificate-authority-data"
        )));
    };

    // Load the cluster config.
    let cfg_text = match std::fs::read_to_string(&config) {
        Ok(t) => t,
        Err(e) => {
            return Ok(exit_with_error(&format!(
                "failed to read config file {config:?}: {}",
                go_io_error(&config, &e)
            )));
        }
    };
    let cfg: serde_norway::Value = match serde_norway::from_str(&cfg_text) {
        Ok(v) => v,
        Err(e) => {
            return Ok(exit_with_error(&format!(
                "failed to parse config file {config:?}: {e}"
            )));
        }
    };
    let kind = cfg.get("kind").and_then(|v| v.as_str()).unwrap_or("");
    let name = cfg
        .get("name")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_owned();
    let want = if flags.admin_cluster {
        "AdminCluster"
    } else {
        "UserCluster"
    };
    if kind != want {
        return Ok(exit_with_error(&format!(
            "config file {config:?} has kind {kind:?}, expected {want:?}{}",
            if flags.admin_cluster {
                ""
            } else {
                " (use --admin-cluster for the admin cluster)"
            }
        )));
    }

    // Talking to the admin cluster: faults show here.
    match state.fault {
        Some(Fault::Hang) => {
            std::thread::sleep(std::time::Duration::from_secs(3600));
            return Ok(1);
        }
        Some(Fault::Unreachable) => {
            return Ok(exit_with_error(&format!(
                "failed to connect to admin cluster: Get \"https://172.16.20.49:443/api?timeout=32s\": dial tcp 172.16.20.49:443: connect: no route to host (kubeconfig {kubeconfig:?})"
            )));
        }
        Some(Fault::Garbage) => {
            let mut o = std::io::stdout();
            writeln!(
                o,
                "W0612 10:22:31.123456   4242 loader.go:221] \u{1b}[33mconfig deprecated\u{1b}[0m"
            )?;
            writeln!(
                o,
                "{{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"status\":\"Failure\""
            )?;
            writeln!(o, "State of CARotation is undetermined ???")?;
            return Ok(0);
        }
        None => {}
    }
    if let Err(e) = state.admin.check_access(&kc_text) {
        let _ = kc_ca;
        let why = match e.strip_prefix("Unable to connect to the server: ") {
            Some(tls) => format!("Get \"https://172.16.20.49:443/api?timeout=32s\": {tls}"),
            None => "Unauthorized".to_owned(),
        };
        return Ok(exit_with_error(&format!(
            "failed to connect to admin cluster with kubeconfig {kubeconfig:?}: {why}"
        )));
    }

    let cluster = if flags.admin_cluster {
        if name != state.admin.name {
            return Ok(exit_with_error(&format!(
                "admin cluster config {config:?} names cluster {name:?}, but the kubeconfig is for admin cluster {:?}",
                state.admin.name
            )));
        }
        &mut state.admin
    } else {
        let admin = state.admin.name.clone();
        match state.users.get_mut(&name) {
            Some(c) => c,
            None => {
                return Ok(exit_with_error(&format!(
                    "failed to get user cluster {name:?}: onpremuserclusters.onprem.cluster.gke.io \"{name}\" not found in admin cluster {admin:?}"
                )));
            }
        }
    };

    if flags.admin_cluster && sub != "status" {
        return admin_rotation(host, sub, flags.complete, &kubeconfig, &kc_text, &mut state);
    }

    match sub {
        "status" => {
            print!(
                "{}",
                status_text(
                    cluster.ca_version,
                    cluster.stage,
                    cluster.leaf_rotation_version.as_deref()
                )
            );
            std::io::stdout().flush()?;
            if cluster.advance_on_status && cluster.stage != Stage::Steady {
                cluster.stage = cluster.stage.next();
                if !flags.admin_cluster {
                    cluster.refresh_admin_secret()?;
                }
                state.save(host)?;
            }
            Ok(0)
        }
        "rotate" if !flags.admin_cluster => {
            if cluster.stage != Stage::Steady {
                return Ok(exit_with_error(
                    "admission webhook \"vonpremusercluster.onprem.cluster.gke.io\" denied the request: requests must not modify CAVersion when cluster is not ready: ready condition is not true: ClusterCreateOrUpdate: Creating or updating user cluster control plane workloads",
                ));
            }
            let next = cluster.ca_version + 1;
            let ca = SimCa::new(
                dn(&[("CN", &format!("{}-ca", cluster.name))]),
                Lifetime::days(0, 5 * 365),
                false,
            )?;
            cluster.cas.insert(
                next,
                super::CaMaterial {
                    cert_pem: ca.cert_pem,
                    key_pem: ca.key_pem,
                },
            );
            cluster.ca_version = next;
            cluster.stage = Stage::NewCaTrusted;
            cluster.advance_on_status = true;
            cluster.refresh_admin_secret()?;
            state.save(host)?;
            println!(
                "successfully started the CA rotation with CAVersion {next}, use gkectl update credentials certificate-authorities status command to view the current state of CA rotation"
            );
            Ok(0)
        }
        _ => {
            eprintln!(
                "certfleet-sim: `{cmd}`{} is not simulated",
                if flags.admin_cluster {
                    " --admin-cluster"
                } else {
                    ""
                }
            );
            Ok(70)
        }
    }
}

fn say(line: &str) -> Result<()> {
    let mut o = std::io::stdout();
    writeln!(o, "{line}")?;
    o.flush()?;
    Ok(())
}

/// The interactive admin-cluster rotation of reference B3 (see the module documentation).
fn admin_rotation(
    host: &SimHost,
    sub: &str,
    complete: bool,
    kubeconfig: &str,
    kc_text: &str,
    state: &mut GkeState,
) -> Result<i32> {
    let next_steps = |v: u32| {
        format!(
            "Run `gkectl update credentials certificate-authorities update-kubeconfig --admin-cluster` to update the kubeconfig, then `gkectl update credentials certificate-authorities rotate --admin-cluster --complete` from the directory holding it to finish the rotation with CAVersion {v}."
        )
    };
    let admin = &mut state.admin;
    let v = admin.ca_version;
    match (sub, complete) {
        ("rotate", false) => {
            if admin.stage != Stage::Steady {
                say(&format!(
                    "The first half of the admin cluster CA rotation with CAVersion {v} is already done."
                ))?;
                say(&next_steps(v))?;
                return Ok(0);
            }
            let next = v + 1;
            say(&format!(
                "Beginning CA rotation of admin cluster {:?} with CAVersion {next}",
                admin.name
            ))?;
            let ca = SimCa::new(
                dn(&[("CN", "kubernetes")]),
                Lifetime::days(0, 30 * 365),
                false,
            )?;
            say(&format!(
                "Generated new admin cluster CA (CAVersion {next})"
            ))?;
            admin.cas.insert(
                next,
                super::CaMaterial {
                    cert_pem: ca.cert_pem,
                    key_pem: ca.key_pem,
                },
            );
            admin.ca_version = next;
            admin.stage = Stage::NewCaTrusted;
            admin.advance_on_status = false;
            state.save(host)?;
            say(&format!(
                "Adding CA {next} to the trust bundles of the admin cluster... DONE"
            ))?;
            say("Restarting the admin cluster control plane... DONE")?;
            say("Restarting the user cluster control planes... DONE")?;
            say(&format!(
                "The first half of the admin cluster CA rotation with CAVersion {next} is done; the rotation is paused."
            ))?;
            say(&next_steps(next))?;
            Ok(0)
        }
        ("rotate", true) => {
            if admin.stage == Stage::Steady {
                if v <= 1 {
                    return Ok(exit_with_error(
                        "no CA rotation of the admin cluster is in progress: run `gkectl update credentials certificate-authorities rotate --admin-cluster` first",
                    ));
                }
                say(&format!(
                    "Successfully completed the CA rotation of the admin cluster with CAVersion {v}."
                ))?;
                return Ok(0);
            }
            // "doesn't proceed until gkectl verifies that the updated kubeconfig file is in the
            // current directory"
            let new_ca = admin.cas.get(&v).map(|c| c.cert_pem.trim().to_owned());
            let updated = new_ca.as_deref().is_some_and(|ca| {
                kcfg::first_cluster_ca(kc_text).is_some_and(|b| b.contains(ca))
                    && kcfg::first_user_cert(kc_text).is_some_and(|c| super::signed_by(&c, ca))
            });
            let base = std::path::Path::new(kubeconfig)
                .file_name()
                .map(|n| n.to_os_string())
                .unwrap_or_default();
            let cwd = std::env::current_dir()?;
            let in_cwd = std::fs::read_to_string(cwd.join(&base)).ok().as_deref() == Some(kc_text);
            if !updated || !in_cwd {
                return Ok(exit_with_error(&format!(
                    "the updated kubeconfig file {:?} was not found in the current directory {}: run `gkectl update credentials certificate-authorities update-kubeconfig --admin-cluster` first and run this command from the directory holding the kubeconfig",
                    base.to_string_lossy(),
                    cwd.display()
                )));
            }
            say(&format!(
                "Verified the updated kubeconfig file {:?} in the current directory",
                base.to_string_lossy()
            ))?;
            say(&format!(
                "Re-issuing the admin cluster control plane certificates from CA {v}... DONE"
            ))?;
            say("Restarting the user cluster control planes... DONE")?;
            admin.stage = Stage::Steady;
            state.save(host)?;
            say(&format!(
                "Removing CA {} from the trust bundles of the admin cluster... DONE",
                v - 1
            ))?;
            say(&format!(
                "Successfully completed the CA rotation of the admin cluster with CAVersion {v}."
            ))?;
            say(
                "Run `gkectl update credentials certificate-authorities update-kubeconfig --admin-cluster` to remove the old CA from the kubeconfig.",
            )?;
            Ok(0)
        }
        ("update-kubeconfig", _) => {
            let (cluster, server, user) = kcfg::first_names(kc_text).unwrap_or_else(|| {
                (
                    admin.name.clone(),
                    admin.server.clone(),
                    "kubernetes-admin".into(),
                )
            });
            let pem = |n: u32| {
                admin
                    .cas
                    .get(&n)
                    .map(|c| c.cert_pem.clone())
                    .unwrap_or_default()
            };
            let (bundle, cert, key) = if admin.stage == Stage::Steady {
                // Second call: drop the old CA, keep the (new) client certificate.
                let cert = kcfg::first_user_cert(kc_text).unwrap_or_default();
                let key = kcfg::first_user_key(kc_text).unwrap_or_default();
                (vec![pem(v)], cert, key)
            } else {
                let m = admin.cas.get(&v).cloned();
                let m = m.ok_or_else(|| anyhow::anyhow!("no CA version {v}"))?;
                let ca = SimCa::from_pem(&m.cert_pem, &m.key_pem)?;
                let client = ca.issue(
                    dn(&[("O", "system:masters"), ("CN", "kubernetes-admin")]),
                    &[],
                    Lifetime::days(0, 365),
                    false,
                    true,
                )?;
                (vec![pem(v - 1), pem(v)], client.cert_pem, client.key_pem)
            };
            let refs: Vec<&str> = bundle.iter().map(String::as_str).collect();
            let text = kcfg::render(&kcfg::KubeconfigSpec {
                cluster: &cluster,
                server: &server,
                ca_pems: &refs,
                user: &user,
                credentials: kcfg::Credentials::Embedded {
                    cert_pem: &cert,
                    key_pem: &key,
                },
            })?;
            if text == kc_text {
                say(&format!(
                    "The kubeconfig file {kubeconfig:?} is up to date."
                ))?;
                return Ok(0);
            }
            if super::disk_full(host) {
                std::fs::write(kubeconfig, &text.as_bytes()[..text.len() / 2])?;
                return Ok(exit_with_error(&format!(
                    "failed to update kubeconfig file {kubeconfig:?}: write {kubeconfig}: no space left on device"
                )));
            }
            std::fs::write(kubeconfig, &text)?;
            if admin.stage == Stage::Steady {
                say(&format!(
                    "Removed CA {} from the kubeconfig file {kubeconfig:?}; it trusts CA {v} only.",
                    v - 1
                ))?;
            } else {
                say(&format!(
                    "Updated the kubeconfig file {kubeconfig:?}: added CA {v} and a client certificate from CA {v}; CA {} stays until the rotation completes.",
                    v - 1
                ))?;
            }
            Ok(0)
        }
        _ => unreachable!("checked by the caller"),
    }
}

/// `open P: no such file or directory`, as Go prints `*fs.PathError`.
fn go_io_error(path: &str, e: &std::io::Error) -> String {
    let what = match e.kind() {
        std::io::ErrorKind::NotFound => "no such file or directory".to_owned(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        _ => e.to_string(),
    };
    format!("open {path}: {what}")
}

/// The status block of reference B2 for CA version `v` at `stage`.
pub fn status_text(v: u32, stage: Stage, leaf_version: Option<&str>) -> String {
    let old = v.saturating_sub(1);
    let (done, reason, cp_bundle, certs_from, signer, dp_bundle, last_signer) = match stage {
        Stage::Steady => (
            true,
            "CARotationCompleted",
            format!("{v}"),
            v,
            v,
            format!("{v}"),
            v,
        ),
        Stage::NewCaTrusted => (
            false,
            "CARotationProgressed",
            format!("{old} {v}"),
            old,
            old,
            format!("{old} {v}"),
            old,
        ),
        Stage::ControlPlaneReissued => (
            false,
            "CARotationProgressed",
            format!("{old} {v}"),
            v,
            old,
            format!("{old} {v}"),
            old,
        ),
        Stage::SignerSwitched => (
            false,
            "CARotationProgressed",
            format!("{old} {v}"),
            v,
            v,
            format!("{old} {v}"),
            v,
        ),
    };
    let mut message = format!(
        "Control plane has CA bundle [{cp_bundle}], certs from CA {certs_from}, CA {signer} is CSR signer. Data plane has CA bundle [{dp_bundle}], CA {last_signer} was CSR signer at last restart."
    );
    if let Some(l) = leaf_version {
        message.push_str(&format!(" Last Leaf Certificates Rotation Version: {l}."));
    }
    format!(
        "State of CARotation with CAVersion {v} is -\nstatus: {},\nreason: {reason},\nmessage: {message}\n",
        if done { "True" } else { "False" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_outputs_verbatim() {
        assert_eq!(
            status_text(2, Stage::Steady, None),
            "State of CARotation with CAVersion 2 is -\nstatus: True,\nreason: CARotationCompleted,\nmessage: Control plane has CA bundle [2], certs from CA 2, CA 2 is CSR signer. Data plane has CA bundle [2], CA 2 was CSR signer at last restart.\n"
        );
        assert_eq!(
            status_text(2, Stage::ControlPlaneReissued, None),
            "State of CARotation with CAVersion 2 is -\nstatus: False,\nreason: CARotationProgressed,\nmessage: Control plane has CA bundle [1 2], certs from CA 2, CA 1 is CSR signer. Data plane has CA bundle [1 2], CA 1 was CSR signer at last restart.\n"
        );
        assert!(
            status_text(2, Stage::Steady, Some("1.16.0-gke.0"))
                .ends_with("Last Leaf Certificates Rotation Version: 1.16.0-gke.0.\n")
        );
    }

    #[test]
    fn flags_like_pflag() {
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let f = parse_flags(&args(&[
            "--admin-cluster",
            "--config=a.yaml",
            "--kubeconfig",
            "kc",
        ]))
        .unwrap();
        assert!(
            f.admin_cluster
                && f.config.as_deref() == Some("a.yaml")
                && f.kubeconfig.as_deref() == Some("kc")
        );
        assert_eq!(
            parse_flags(&args(&["--bogus"])).unwrap_err(),
            "unknown flag: --bogus"
        );
        assert_eq!(
            parse_flags(&args(&["--config"])).unwrap_err(),
            "flag needs an argument: --config"
        );
    }
}

//! GKE on VMware (Google Distributed Cloud for VMware) and kubeadm actions.
//!
//! | action | does |
//! |---|---|
//! | `gke.ca_rotate` | on an admin workstation: starts `gkectl update credentials certificate-authorities rotate` for a user cluster (or follows one already in progress, which gkectl refuses to start twice) and polls `status` through its stages to `CARotationCompleted`, streaming each stage |
//! | `gke.fetch_kubeconfig` | on an admin workstation: reads the user cluster's new admin kubeconfig from the admin cluster (`kubectl get secret admin -n CLUSTER -o jsonpath='{.data.admin\.conf}'`), checks it trusts exactly one CA that signed its client certificate, and stages it 0600 in the agent's state directory; only its path and fingerprints go back to the controller |
//! | `kubeconfig.install` | installs a staged kubeconfig on the SAME host: backup, atomic 0600 write keeping the owner, re-read and check its CA data holds exactly the expected CAs and (`verify_access`) that `kubectl --kubeconfig … version` reaches the cluster with it, restore on failure |
//! | `gke.admin_ca_rotate` | on an admin workstation, the admin-cluster CA rotation of reference B3 in two halves: `phase=start` runs `gkectl update credentials certificate-authorities rotate --admin-cluster` (first half; re-running it resumes an interrupted run) up to the pause where B3 says to update the kubeconfig; `phase=complete` runs `rotate --admin-cluster --complete` from the directory holding the admin kubeconfig (gkectl insists) and checks `status` reports `CARotationCompleted`. Both stream gkectl's lines and are safe to re-send: a rotation already past the CA in scope (`ca_sha256`: completed, and the kubeconfig's client certificate no longer comes from that CA) is not started again |
//! | `gke.admin_kubeconfig_update` | runs `gkectl … update-kubeconfig --admin-cluster` on a private 0600 copy of the admin kubeconfig, checks the result (`expect=bundle`: the old CA plus exactly one new CA and a client certificate from the new one; `expect=new`: one CA, not the old one, that signed the client certificate, `openssl verify`), backs up the real file, installs the result atomically (0600, same owner), re-reads it, checks access with `kubectl --kubeconfig … version`, and restores the backup byte for byte on failure. Already in the expected state: nothing to do |
//! | `kubeadm.renew_all` | on a kubeadm control-plane node: backs up `/etc/kubernetes/pki` and `/etc/kubernetes/*.conf`, runs `kubeadm certs renew all`, checks every leaf got a later not-after and chains to its CA (`openssl verify`), restarts the static pods by moving each manifest out of `/etc/kubernetes/manifests` and back (reference C4, etcd last) and waits for a new running container (`crictl ps`); on any failure restores the backup byte for byte and restarts the pods again. Resumed after an agent crash: renews only the leaves the backup comparison shows not renewed, restarts only the pods not restarted yet |
//!
//! Kubeconfigs with client keys are credentials: they never travel through the controller. A
//! workstation fetches its own copy from the admin cluster with its own admin kubeconfig, so a
//! recipe installing on several workstations runs fetch + install on each of them.
//!
//! Host layout (settings, defaults as gkectl and kubeadm write them, reference B6/C1):
//! `gke.workdir` (`/home/ubuntu`), `gke.admin_config` (`WORKDIR/admin-cluster.yaml`),
//! `gke.admin_kubeconfig` (`WORKDIR/kubeconfig`),
//! `gke.user_configs` (comma-separated; default every `UserCluster` config in the work
//! directory), tools `gkectl`, `kubectl`; `kubeadm.cert_dir` (`/etc/kubernetes/pki`, passed as
//! `--cert-dir` only when set), `kubeadm.kubernetes_dir` (`/etc/kubernetes`),
//! `kubeadm.manifests` (`/etc/kubernetes/manifests`), tools `kubeadm`, `crictl`, `openssl`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{ActContext, ActError, arg_str, backup};
use crate::collect::gke_admin::{self, RotationStage};
use crate::collect::kubeconfig;

/// Runs `action` (`gke.*`, `kubeadm.*`, `kubeconfig.*`).
pub fn dispatch(action: &str, ctx: &ActContext<'_>, args: &Value) -> Result<Value, ActError> {
    match action {
        "gke.ca_rotate" => ca_rotate(ctx, args),
        "gke.fetch_kubeconfig" => fetch_kubeconfig(ctx, args),
        "kubeconfig.install" => kubeconfig_install(ctx, args),
        "gke.admin_ca_rotate" => admin_ca_rotate(ctx, args),
        "gke.admin_kubeconfig_update" => admin_kubeconfig_update(ctx, args),
        "kubeadm.renew_all" => renew_all(ctx, args),
        other => Err(ActError(format!(
            "unknown action {other:?} (this agent is version {})",
            env!("CARGO_PKG_VERSION")
        ))),
    }
}

fn poll_interval(args: &Value, default: u64) -> Duration {
    Duration::from_secs(
        args.get("poll_secs")
            .and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()))
            .unwrap_or(default),
    )
    .max(Duration::from_millis(200))
}

fn workdir(ctx: &ActContext<'_>) -> String {
    ctx.cfg
        .setting("gke.workdir")
        .unwrap_or("/home/ubuntu")
        .trim_end_matches('/')
        .to_owned()
}

fn admin_kubeconfig(ctx: &ActContext<'_>) -> PathBuf {
    let p = ctx
        .cfg
        .setting("gke.admin_kubeconfig")
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{}/kubeconfig", workdir(ctx)));
    ctx.cfg.host_path(p)
}

/// The config file of user cluster `cluster` (real path).
fn user_config(ctx: &ActContext<'_>, cluster: &str) -> Result<PathBuf, ActError> {
    let candidates: Vec<String> = match ctx.cfg.setting("gke.user_configs") {
        Some(list) => list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        None => {
            let w = workdir(ctx);
            let mut v: Vec<String> = std::fs::read_dir(ctx.cfg.host_path(&w))
                .map_err(|e| ActError(format!("listing work directory {w}: {e}")))?
                .filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
                .map(|n| format!("{w}/{n}"))
                .collect();
            v.sort();
            v
        }
    };
    for c in &candidates {
        let p = ctx.cfg.host_path(c);
        let Ok(bytes) = std::fs::read(&p) else {
            continue;
        };
        if let Ok(cfg) = gke_admin::parse_cluster_config(&bytes)
            && cfg.kind.as_deref() == Some("UserCluster")
            && cfg.name.as_deref() == Some(cluster)
        {
            return Ok(p);
        }
    }
    Err(ActError(format!(
        "no UserCluster config named {cluster:?} on this workstation (looked at {})",
        candidates.join(", ")
    )))
}

fn cluster_arg(args: &Value) -> Result<&str, ActError> {
    let c = arg_str(args, "cluster")?;
    if !certfleet_common::identity::valid_name(c) {
        return Err(ActError(format!("cluster name {c:?} is not a plain name")));
    }
    Ok(c)
}

/// `gke.ca_rotate` (see the module table).
///
/// Idempotent by construction: gkectl keeps the rotation's stage in the admin cluster, and a
/// run finds a rotation already in progress and follows it instead of starting a second one,
/// so a resumed step (agent died mid-rotation) asks `status` first and goes on from there.
fn ca_rotate(ctx: &ActContext<'_>, args: &Value) -> Result<Value, ActError> {
    let cluster = cluster_arg(args)?;
    let poll = poll_interval(args, 30);
    let gkectl = ctx.cfg.tool("gkectl", "/usr/bin/gkectl");
    let config = user_config(ctx, cluster)?.display().to_string();
    let kc = admin_kubeconfig(ctx).display().to_string();
    let cmd = |sub: &'static str| -> Vec<String> {
        [
            "update",
            "credentials",
            "certificate-authorities",
            sub,
            "--config",
            &config,
            "--kubeconfig",
            &kc,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let status = |quiet: bool| -> Result<gke_admin::CaRotationStatus, ActError> {
        let a = cmd("status");
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let out = if quiet {
            crate::exec::run_ok(&gkectl, &a, None, ctx.timeout)?
        } else {
            ctx.run_ok(&gkectl, &a, None)?
        };
        gke_admin::parse_status(&out.stdout).map_err(|e| {
            ActError(format!(
                "gkectl status for user cluster {cluster} printed {e}"
            ))
        })
    };

    let first = status(false)?;
    // Re-sent after a lost journal entry: the CA in scope may already be rotated away.
    if first.done
        && let Some(fp) = args.get("ca_sha256").and_then(Value::as_str)
    {
        let text = secret_kubeconfig(ctx, cluster)?;
        let facts = kubeconfig_facts(&text, &format!("secret admin in namespace {cluster}"))?;
        if !facts.ca_sha256.iter().any(|f| f.eq_ignore_ascii_case(fp)) {
            (ctx.output)(format!(
                "user cluster {cluster} no longer uses CA {} (CAVersion {} completed): not starting another rotation",
                &fp[..16.min(fp.len())],
                first.ca_version
            ));
            return Ok(json!({
                "message": format!("CA {} of user cluster {cluster} was already rotated (CAVersion {})", &fp[..16.min(fp.len())], first.ca_version),
                "cluster": cluster,
                "ca_version": first.ca_version,
                "already": true,
            }));
        }
    }
    let target = if first.done {
        let a = cmd("rotate");
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        (ctx.output)(format!("$ {}", crate::exec::command_line(&gkectl, &a)));
        let out = crate::exec::run(&gkectl, &a, None, ctx.timeout)?;
        for l in out.stdout.lines().chain(out.stderr.lines()) {
            (ctx.output)(l.to_owned());
        }
        if out.code == Some(0) {
            // "successfully started the CA rotation with CAVersion N, …"
            out.stdout
                .split("CAVersion ")
                .nth(1)
                .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse::<u32>().ok())
                .unwrap_or(first.ca_version + 1)
        } else if out.stderr.contains("denied the request")
            && out.stderr.contains("must not modify CAVersion")
        {
            (ctx.output)(format!(
                "a CA rotation of {cluster} is already in progress: following it"
            ));
            status(true)?.ca_version
        } else {
            return Err(ActError(format!(
                "gkectl rotate for user cluster {cluster} failed (exit {}): {}",
                out.code.unwrap_or(-1),
                out.stderr.trim()
            )));
        }
    } else {
        (ctx.output)(format!(
            "a CA rotation of {cluster} (CAVersion {}) is already in progress: following it",
            first.ca_version
        ));
        first.ca_version
    };

    let deadline = Instant::now() + ctx.timeout;
    let mut stages: Vec<String> = Vec::new();
    loop {
        let s = status(true)?;
        let st = gke_admin::stage(&s);
        let line = format!(
            "CAVersion {} {} ({}): {}",
            s.ca_version,
            st.as_str(),
            s.reason,
            s.message
        );
        if stages.last() != Some(&line) {
            (ctx.output)(format!("stage: {line}"));
            stages.push(line);
        }
        if st == RotationStage::Completed && s.ca_version >= target {
            return Ok(json!({
                "message": format!("CA rotation of user cluster {cluster} completed with CAVersion {}", s.ca_version),
                "cluster": cluster,
                "ca_version": s.ca_version,
                "stages": stages,
            }));
        }
        if Instant::now() + poll > deadline {
            return Err(ActError(format!(
                "CA rotation of user cluster {cluster} not completed within {}s; last status: {} (it cannot be rolled back; re-run the step to keep following it)",
                ctx.timeout.as_secs(),
                stages.last().cloned().unwrap_or_default()
            )));
        }
        std::thread::sleep(poll);
    }
}

/// Fingerprints of the CA certificates and the first client certificate of kubeconfig text.
struct KubeconfigFacts {
    ca_sha256: Vec<String>,
    ca_pem: String,
    client_sha256: String,
    client_not_after: i64,
    client_pem: String,
}

fn kubeconfig_facts(text: &[u8], what: &str) -> Result<KubeconfigFacts, ActError> {
    let kc = kubeconfig::parse(text).map_err(|e| ActError(format!("{what}: {e}")))?;
    let cluster = kc
        .clusters
        .as_ref()
        .and_then(|c| c.first())
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.certificate_authority_data.as_deref())
        .ok_or_else(|| ActError(format!("{what}: no certificate-authority-data")))?;
    let cas = kubeconfig::decode_certificates("certificate-authority-data", cluster)
        .map_err(|e| ActError(format!("{what}: {e}")))?;
    let user = kc
        .users
        .as_ref()
        .and_then(|u| u.first())
        .and_then(|u| u.user.as_ref())
        .and_then(|u| u.client_certificate_data.as_deref())
        .ok_or_else(|| ActError(format!("{what}: no client-certificate-data")))?;
    let client = kubeconfig::decode_certificates("client-certificate-data", user)
        .map_err(|e| ActError(format!("{what}: {e}")))?;
    let client = client
        .first()
        .ok_or_else(|| ActError(format!("{what}: empty client-certificate-data")))?;
    let rec = certfleet_common::x509::parse_der(client)
        .map_err(|e| ActError(format!("{what}: client certificate: {e}")))?;
    Ok(KubeconfigFacts {
        ca_sha256: cas
            .iter()
            .map(|d| certfleet_common::pki::sha256_hex(d))
            .collect(),
        ca_pem: cas
            .iter()
            .map(|d| certfleet_common::pem::encode("CERTIFICATE", d))
            .collect(),
        client_sha256: rec.fingerprint_sha256,
        client_not_after: rec.not_after,
        client_pem: certfleet_common::pem::encode("CERTIFICATE", client),
    })
}

fn staging_dir(ctx: &ActContext<'_>) -> Result<PathBuf, ActError> {
    let d = ctx.state.path().join("staged");
    certfleet_common::atomic::create_private_dir(&d).map_err(|e| ActError(e.to_string()))?;
    Ok(d)
}

/// `openssl verify -CAfile CA CERT` with both written to the private staging directory.
fn openssl_verify(
    ctx: &ActContext<'_>,
    ca_pem: &str,
    cert_pem: &str,
    what: &str,
) -> Result<(), ActError> {
    let dir = staging_dir(ctx)?;
    let ca = dir.join(format!("{}.verify-ca.pem", ctx.step_id));
    let cert = dir.join(format!("{}.verify-cert.pem", ctx.step_id));
    let w = |p: &Path, s: &str| {
        certfleet_common::atomic::write_file(p, s.as_bytes(), 0o600)
            .map_err(|e| ActError(e.to_string()))
    };
    w(&ca, ca_pem)?;
    w(&cert, cert_pem)?;
    let openssl = ctx.cfg.tool("openssl", "/usr/bin/openssl");
    let r = ctx.run_ok(
        &openssl,
        &[
            "verify",
            "-CAfile",
            &ca.display().to_string(),
            &cert.display().to_string(),
        ],
        None,
    );
    let _ = std::fs::remove_file(&ca);
    let _ = std::fs::remove_file(&cert);
    r.map(|_| ()).map_err(|e| ActError(format!("{what}: {e}")))
}

/// `gke.fetch_kubeconfig` (see the module table).
///
/// Idempotent by construction: it only reads the admin cluster and stages a copy in the
/// agent's state directory (written atomically, 0600); a resumed step reads and stages again.
fn fetch_kubeconfig(ctx: &ActContext<'_>, args: &Value) -> Result<Value, ActError> {
    let cluster = cluster_arg(args)?;
    let text = secret_kubeconfig(ctx, cluster)?;
    let what = format!("admin.conf of secret admin in namespace {cluster}");
    fetch_rest(ctx, cluster, text, what)
}

/// The user cluster's admin kubeconfig as the admin cluster issues it now (B2: `kubectl get
/// secret admin -n CLUSTER -o jsonpath='{.data.admin\.conf}' | base64 --decode`).
fn secret_kubeconfig(ctx: &ActContext<'_>, cluster: &str) -> Result<Vec<u8>, ActError> {
    let kubectl = ctx.cfg.tool("kubectl", "/usr/bin/kubectl");
    let kc = admin_kubeconfig(ctx).display().to_string();
    let a = [
        "--kubeconfig",
        &kc,
        "get",
        "secret",
        "admin",
        "-n",
        cluster,
        "-o",
        "jsonpath={.data.admin\\.conf}",
    ];
    // The output is a credential: echo the command only, never what it printed.
    (ctx.output)(format!(
        "$ {} | base64 --decode",
        crate::exec::command_line(&kubectl, &a)
    ));
    let out = crate::exec::run_ok(&kubectl, &a, None, ctx.timeout)?;
    kubeconfig::decode_base64("admin.conf", out.stdout.trim())
        .map_err(|e| ActError(format!("secret admin in namespace {cluster}: {e}")))
}

fn fetch_rest(
    ctx: &ActContext<'_>,
    cluster: &str,
    text: Vec<u8>,
    what: String,
) -> Result<Value, ActError> {
    let facts = kubeconfig_facts(&text, &what)?;
    if facts.ca_sha256.len() != 1 {
        return Err(ActError(format!(
            "{what} trusts {} CAs: the CA rotation has not completed",
            facts.ca_sha256.len()
        )));
    }
    openssl_verify(ctx, &facts.ca_pem, &facts.client_pem, &what)?;
    let name = format!("{}.kubeconfig", ctx.step_id);
    let path = staging_dir(ctx)?.join(&name);
    certfleet_common::atomic::write_file(&path, &text, 0o600)
        .map_err(|e| ActError(e.to_string()))?;
    (ctx.output)(format!(
        "staged {} (0600); CA {}, client certificate {}",
        path.display(),
        &facts.ca_sha256[0][..16],
        &facts.client_sha256[..16]
    ));
    Ok(json!({
        "message": format!("new kubeconfig of {cluster} staged on this host; CA {}", &facts.ca_sha256[0][..16]),
        "cluster": cluster,
        "staged": name,
        "sha256": certfleet_common::pki::sha256_hex(&text),
        "ca_sha256": facts.ca_sha256,
        "client_sha256": facts.client_sha256,
        "client_not_after": facts.client_not_after,
    }))
}

/// `kubeconfig.install` (see the module table).
///
/// Idempotent by construction: the destination is backed up once, before the first write, and
/// a resumed step keeps that backup (the file as it was before the step, [`backup::create`]);
/// installing writes the same staged bytes (checked against `sha256`) atomically again, and
/// the checks run again.
fn kubeconfig_install(ctx: &ActContext<'_>, args: &Value) -> Result<Value, ActError> {
    let staged = arg_str(args, "staged")?;
    if !certfleet_common::identity::valid_name(staged.trim_end_matches(".kubeconfig")) {
        return Err(ActError(format!(
            "staged name {staged:?} is not a plain file name"
        )));
    }
    let dest_host = arg_str(args, "path")?;
    let dest = ctx.cfg.host_path(dest_host);
    let expected: Vec<String> = args
        .get("ca_sha256")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if expected.is_empty() {
        return Err(ActError("missing ca_sha256 (the CAs to expect)".into()));
    }
    let src = staging_dir(ctx)?.join(staged);
    let bytes = std::fs::read(&src).map_err(|e| {
        ActError(format!(
            "staged kubeconfig {} on this host: {e} (fetch and install must run on the same host)",
            src.display()
        ))
    })?;
    if let Some(want) = args.get("sha256").and_then(Value::as_str)
        && certfleet_common::pki::sha256_hex(&bytes) != want
    {
        return Err(ActError(format!(
            "staged kubeconfig {} changed since it was fetched",
            src.display()
        )));
    }
    let owner = std::fs::metadata(&dest).ok().map(|m| {
        use std::os::unix::fs::MetadataExt;
        (m.uid(), m.gid())
    });
    let m = backup::create(ctx.state, ctx.step_id, std::slice::from_ref(&dest))?;
    (ctx.output)(format!("backup {} holds {}", m.id, dest.display()));
    let attempt = (|| -> Result<KubeconfigFacts, ActError> {
        backup::install(&dest, &bytes, 0o600, owner)?;
        (ctx.output)(format!("installed {} (mode 600)", dest.display()));
        let back =
            std::fs::read(&dest).map_err(|e| ActError(format!("{}: {e}", dest.display())))?;
        let facts = kubeconfig_facts(&back, &dest.display().to_string())?;
        let mut got = facts.ca_sha256.clone();
        let mut want = expected.clone();
        got.sort();
        want.sort();
        if got != want {
            return Err(ActError(format!(
                "{} trusts CA(s) {} instead of {}",
                dest.display(),
                got.iter().map(|f| &f[..16]).collect::<Vec<_>>().join(" "),
                want.iter()
                    .map(|f| &f[..16.min(f.len())])
                    .collect::<Vec<_>>()
                    .join(" ")
            )));
        }
        openssl_verify(
            ctx,
            &facts.ca_pem,
            &facts.client_pem,
            &dest.display().to_string(),
        )?;
        if args.get("verify_access").and_then(Value::as_bool) == Some(true) {
            kubectl_version(ctx, &dest)?;
        }
        Ok(facts)
    })();
    match attempt {
        Ok(facts) => {
            let _ = std::fs::remove_file(&src);
            Ok(json!({
                "message": format!("{dest_host} now trusts CA {} only", &facts.ca_sha256[0][..16]),
                "backup_id": m.id,
                "ca_sha256": facts.ca_sha256,
                "client_not_after": facts.client_not_after,
            }))
        }
        Err(e) => {
            (ctx.output)(format!(
                "verification failed: {e}; restoring backup {}",
                m.id
            ));
            Err(match backup::restore(ctx.state, &m.id) {
                Ok(_) => ActError(format!(
                    "{e} (rolled back: {} restored from backup {})",
                    dest.display(),
                    m.id
                )),
                Err(r) => ActError(format!("{e}; ROLLBACK FAILED: {r} (backup {} kept)", m.id)),
            })
        }
    }
}

/// Static pods restarted after a renewal, etcd last (reference C4).
const STATIC_PODS: &[&str] = &[
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "etcd",
];

/// Every regular file under `dir`, recursively, sorted.
fn files_under(dir: &Path) -> Result<Vec<PathBuf>, ActError> {
    let mut out = Vec::new();
    let rd = std::fs::read_dir(dir).map_err(|e| ActError(format!("{}: {e}", dir.display())))?;
    for e in rd {
        let e = e.map_err(|e| ActError(format!("{}: {e}", dir.display())))?;
        let t = e.file_type().map_err(|e| ActError(format!("{}: {e}", e)))?;
        if t.is_dir() {
            out.extend(files_under(&e.path())?);
        } else if t.is_file() {
            out.push(e.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Leaf certificates kubeadm renews: `(label, path, is_kubeconfig)` → not-after.
fn leaf_not_afters(pki: &Path, kdir: &Path) -> Result<Vec<(String, PathBuf, bool, i64)>, ActError> {
    let mut v = Vec::new();
    for p in files_under(pki)? {
        if p.extension().and_then(|e| e.to_str()) != Some("crt") {
            continue;
        }
        let bytes = std::fs::read(&p).map_err(|e| ActError(format!("{}: {e}", p.display())))?;
        let der = certfleet_common::pem::first_certificate(&bytes)
            .map_err(|e| ActError(format!("{}: {e}", p.display())))?;
        let rec = certfleet_common::x509::parse_der(&der)
            .map_err(|e| ActError(format!("{}: {e}", p.display())))?;
        if rec.is_ca {
            continue;
        }
        let label = p.strip_prefix(pki).unwrap_or(&p).display().to_string();
        v.push((label, p, false, rec.not_after));
    }
    for name in [
        "admin.conf",
        "controller-manager.conf",
        "scheduler.conf",
        "super-admin.conf",
    ] {
        let p = kdir.join(name);
        let Ok(bytes) = std::fs::read(&p) else {
            continue;
        };
        let f = kubeconfig_facts(&bytes, &p.display().to_string())?;
        v.push((name.to_owned(), p, true, f.client_not_after));
    }
    Ok(v)
}

/// The kubeadm renewal handler (`kubeadm certs renew NAME`) of a leaf, by its label (path
/// under the pki directory, or kubeconfig name), as kubeadm's `certs.go` lists them.
fn kubeadm_handler(label: &str) -> Option<&'static str> {
    Some(match label {
        "apiserver.crt" => "apiserver",
        "apiserver-etcd-client.crt" => "apiserver-etcd-client",
        "apiserver-kubelet-client.crt" => "apiserver-kubelet-client",
        "front-proxy-client.crt" => "front-proxy-client",
        "etcd/server.crt" => "etcd-server",
        "etcd/peer.crt" => "etcd-peer",
        "etcd/healthcheck-client.crt" => "etcd-healthcheck-client",
        "admin.conf" => "admin.conf",
        "controller-manager.conf" => "controller-manager.conf",
        "scheduler.conf" => "scheduler.conf",
        "super-admin.conf" => "super-admin.conf",
        _ => return None,
    })
}

/// A leaf as the step's backup holds it (the file before the step).
struct BackedUpLeaf {
    label: String,
    path: PathBuf,
    is_conf: bool,
    not_after: i64,
    bytes: Vec<u8>,
}

/// The leaves kubeadm renews, read from the step's backup: on a resumed step the files on
/// disk may already be renewed, so "before" must come from the backup, never from the disk.
fn backed_up_leaves(
    ctx: &ActContext<'_>,
    m: &backup::Manifest,
    pki: &Path,
    kdir: &Path,
) -> Result<Vec<BackedUpLeaf>, ActError> {
    let mut v = Vec::new();
    for f in m.files.iter().filter(|f| f.existed) {
        let is_crt =
            f.path.starts_with(pki) && f.path.extension().and_then(|e| e.to_str()) == Some("crt");
        let conf = f.path.parent() == Some(kdir)
            && f.path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| {
                    matches!(
                        n,
                        "admin.conf"
                            | "controller-manager.conf"
                            | "scheduler.conf"
                            | "super-admin.conf"
                    )
                });
        if !is_crt && !conf {
            continue;
        }
        let bytes = backup::read_stored(ctx.state, m, f)?;
        let what = format!("{} (backup {})", f.path.display(), m.id);
        if conf {
            let facts = kubeconfig_facts(&bytes, &what)?;
            let label = f
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            v.push(BackedUpLeaf {
                label,
                path: f.path.clone(),
                is_conf: true,
                not_after: facts.client_not_after,
                bytes,
            });
            continue;
        }
        let der = certfleet_common::pem::first_certificate(&bytes)
            .map_err(|e| ActError(format!("{what}: {e}")))?;
        let rec = certfleet_common::x509::parse_der(&der)
            .map_err(|e| ActError(format!("{what}: {e}")))?;
        if rec.is_ca {
            continue;
        }
        v.push(BackedUpLeaf {
            label: f
                .path
                .strip_prefix(pki)
                .unwrap_or(&f.path)
                .display()
                .to_string(),
            path: f.path.clone(),
            is_conf: false,
            not_after: rec.not_after,
            bytes,
        });
    }
    v.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(v)
}

/// Whether the private key `key_pem` belongs to the certificate `cert_der` (`openssl pkey
/// -pubout` against the certificate's SubjectPublicKeyInfo). The key goes through stdin only.
fn key_matches(ctx: &ActContext<'_>, cert_der: &[u8], key_pem: &[u8]) -> bool {
    let openssl = ctx.cfg.tool("openssl", "/usr/bin/openssl");
    let Ok(out) = crate::exec::run_ok(&openssl, &["pkey", "-pubout"], Some(key_pem), ctx.timeout)
    else {
        return false;
    };
    let Some((_, spki)) = certfleet_common::pem::decode_all(out.stdout.as_bytes())
        .ok()
        .and_then(|b| b.into_iter().next())
    else {
        return false;
    };
    x509_parser::parse_x509_certificate(cert_der)
        .is_ok_and(|(_, c)| c.tbs_certificate.subject_pki.raw == spki.as_slice())
}

/// Whether an interrupted attempt already renewed `leaf`: the file differs from the backup,
/// holds a certificate with a later not-after than the backed-up one, and its key (the `.key`
/// beside a `.crt`, `client-key-data` of a kubeconfig) matches it. kubeadm writes the key
/// first and the certificate second (`pkiutil.WriteCertAndKey`), so a renewal cut between the
/// two leaves a new key beside the old certificate: not renewed.
fn renewed_since_backup(ctx: &ActContext<'_>, leaf: &BackedUpLeaf) -> bool {
    let Ok(now) = std::fs::read(&leaf.path) else {
        return false;
    };
    if now == leaf.bytes {
        return false;
    }
    let (cert_pem, key_pem) = if leaf.is_conf {
        let Ok(kc) = kubeconfig::parse(&now) else {
            return false;
        };
        let user = kc
            .users
            .as_ref()
            .and_then(|u| u.first())
            .and_then(|u| u.user.as_ref());
        let field = |v: Option<&String>, name: &'static str| {
            v.and_then(|s| kubeconfig::decode_base64(name, s).ok())
        };
        match (
            field(
                user.and_then(|u| u.client_certificate_data.as_ref()),
                "client-certificate-data",
            ),
            field(
                user.and_then(|u| u.client_key_data.as_ref()),
                "client-key-data",
            ),
        ) {
            (Some(c), Some(k)) => (c, k),
            _ => return false,
        }
    } else {
        match std::fs::read(leaf.path.with_extension("key")) {
            Ok(k) => (now, k),
            Err(_) => return false,
        }
    };
    let Ok(der) = certfleet_common::pem::first_certificate(&cert_pem) else {
        return false;
    };
    let later = certfleet_common::x509::parse_der(&der).is_ok_and(|r| r.not_after > leaf.not_after);
    later && key_matches(ctx, &der, &key_pem)
}

/// Where [`restart_static_pod`] holds a manifest while its pod stops.
fn hold_dir(manifests: &Path) -> PathBuf {
    manifests
        .parent()
        .unwrap_or(manifests)
        .join("certfleet-manifests-hold")
}

/// Puts back every manifest an interrupted restart left in the hold directory (its pod is
/// stopped until then). A manifest already back in place is left as it is.
fn return_held_manifests(ctx: &ActContext<'_>, manifests: &Path) -> Result<(), ActError> {
    let hold = hold_dir(manifests);
    for pod in STATIC_PODS {
        let held = hold.join(format!("{pod}.yaml"));
        let manifest = manifests.join(format!("{pod}.yaml"));
        if held.is_file() && !manifest.exists() {
            (ctx.output)(format!(
                "{pod}: the interrupted attempt left its manifest out; $ mv {} {}",
                held.display(),
                manifest.display()
            ));
            std::fs::rename(&held, &manifest).map_err(|e| {
                ActError(format!(
                    "moving {} back to {}: {e} (the pod is stopped!)",
                    held.display(),
                    manifest.display()
                ))
            })?;
        }
    }
    Ok(())
}

/// `kubeadm.renew_all` (see the module table).
///
/// Idempotent by construction. The backup of `/etc/kubernetes/pki` and the kubeconfigs is
/// taken once, before kubeadm runs, and a resumed step keeps it ([`backup::create`]); "before"
/// (the not-afters every leaf must beat) is read from that backup, not from the disk. kubeadm
/// renews unconditionally, whatever the expiry, with a new key each time (its `certs renew`
/// help: "Renewals run unconditionally, regardless of certificate expiration date";
/// `RenewUsingLocalCA` issues a new certificate and key), and keeps no record of what it
/// issued, so a second `renew all` would silently replace certificates the first attempt
/// already renewed (and pods may already run on). A resumed step therefore compares each leaf
/// with the backup ([`renewed_since_backup`]: other bytes, later not-after, key matches) and
/// runs `kubeadm certs renew NAME` only for the leaves not renewed (`renew all` when none
/// was). Static pods: each restart is noted in the intent journal after the new container
/// runs; a resumed step that renewed nothing itself skips the pods already restarted, and
/// first puts back a manifest an interrupted restart held out of `manifests/`.
fn renew_all(ctx: &ActContext<'_>, args: &Value) -> Result<Value, ActError> {
    let poll = poll_interval(args, 20);
    let start_wait = Duration::from_secs(
        args.get("pod_start_secs")
            .and_then(Value::as_u64)
            .unwrap_or(120),
    );
    let cert_dir_setting = ctx.cfg.setting("kubeadm.cert_dir");
    let pki = ctx
        .cfg
        .host_path(cert_dir_setting.unwrap_or("/etc/kubernetes/pki"));
    let kdir = ctx.cfg.host_path(
        ctx.cfg
            .setting("kubeadm.kubernetes_dir")
            .unwrap_or("/etc/kubernetes"),
    );
    let manifests = ctx.cfg.host_path(
        ctx.cfg
            .setting("kubeadm.manifests")
            .unwrap_or("/etc/kubernetes/manifests"),
    );
    let kubeadm = ctx.cfg.tool("kubeadm", "/usr/bin/kubeadm");

    let mut paths = files_under(&pki)?;
    let mut confs: Vec<PathBuf> = std::fs::read_dir(&kdir)
        .map_err(|e| ActError(format!("{}: {e}", kdir.display())))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().and_then(|e| e.to_str()) == Some("conf"))
        .collect();
    confs.sort();
    paths.extend(confs);
    // A resumed step keeps the first attempt's backup; files kubeadm may have added since are
    // in no backup, so a resumed step backs up what the first attempt saw (the manifest's).
    let m = match backup::find(ctx.state, ctx.step_id).filter(|_| ctx.resumed()) {
        Some(m) => m,
        None => backup::create(ctx.state, ctx.step_id, &paths)?,
    };
    (ctx.output)(format!(
        "backup {} holds {} file(s) of {} and {}/*.conf",
        m.id,
        m.files.len(),
        pki.display(),
        kdir.display()
    ));
    ctx.crash_point("after-backup");
    let leaves = backed_up_leaves(ctx, &m, &pki, &kdir)?;
    if ctx.resumed() {
        return_held_manifests(ctx, &manifests)?;
    }

    let mut restarted: Vec<String> = Vec::new();
    let attempt = (|| -> Result<Vec<(String, i64)>, ActError> {
        let pki_s = pki.display().to_string();
        // What still needs kubeadm: everything on a first attempt; on a resumed one, the
        // leaves the interrupted attempt did not renew.
        let pending: Vec<&BackedUpLeaf> = if ctx.resumed() {
            leaves
                .iter()
                .filter(|l| {
                    let done = renewed_since_backup(ctx, l);
                    if done {
                        (ctx.output)(format!(
                            "{}: already renewed by the interrupted attempt; not renewing it again",
                            l.label
                        ));
                    }
                    !done
                })
                .collect()
        } else {
            leaves.iter().collect()
        };
        let runs: Vec<Vec<&str>> = if pending.len() == leaves.len() {
            vec![vec!["certs", "renew", "all"]]
        } else {
            pending
                .iter()
                .filter_map(|l| kubeadm_handler(&l.label))
                .map(|h| vec!["certs", "renew", h])
                .collect()
        };
        for mut a in runs.clone() {
            if cert_dir_setting.is_some() {
                a.extend(["--cert-dir", &pki_s]);
            }
            let out = ctx.run_ok(&kubeadm, &a, None)?;
            let cmd = a[..3].join(" ");
            // `renew all` closes with "Done renewing certificates"; one handler may print only
            // its "<long name> renewed" line (unverified for every kubeadm version).
            let done = out.stdout.contains("Done renewing certificates")
                || (a[2] != "all"
                    && out
                        .stdout
                        .lines()
                        .any(|l| l.trim_end().ends_with(" renewed")));
            if !done {
                return Err(ActError(format!(
                    "kubeadm {cmd} did not report \"Done renewing certificates\""
                )));
            }
            if let Some(l) = out
                .stdout
                .lines()
                .find(|l| l.starts_with("MISSING!") || l.starts_with("Detected external"))
            {
                return Err(ActError(format!("kubeadm {cmd}: {l}")));
            }
        }
        ctx.crash_point("after-renew");
        // Every leaf: later not-after than in the backup, valid now, signed by a CA in the pki.
        let now = certfleet_common::model::now();
        let after = leaf_not_afters(&pki, &kdir)?;
        let ca_bundle: String = files_under(&pki)?
            .into_iter()
            .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("crt"))
            .filter_map(|p| std::fs::read(&p).ok())
            .filter_map(|b| certfleet_common::pem::first_certificate(&b).ok())
            .filter(|d| certfleet_common::x509::parse_der(d).is_ok_and(|r| r.is_ca))
            .map(|d| certfleet_common::pem::encode("CERTIFICATE", &d))
            .collect();
        let mut renewed = Vec::new();
        for l in &leaves {
            let (label, path, is_conf, old) = (&l.label, &l.path, l.is_conf, l.not_after);
            let Some((_, _, _, new)) = after.iter().find(|(x, ..)| x == label) else {
                return Err(ActError(format!(
                    "{} is gone after kubeadm certs renew all",
                    path.display()
                )));
            };
            if *new <= old || *new <= now {
                return Err(ActError(format!(
                    "{} was not renewed: not-after {} (before {})",
                    path.display(),
                    certfleet_common::model::format_time(*new),
                    certfleet_common::model::format_time(old)
                )));
            }
            let pem = if is_conf {
                let b = std::fs::read(path)
                    .map_err(|e| ActError(format!("{}: {e}", path.display())))?;
                kubeconfig_facts(&b, &path.display().to_string())?.client_pem
            } else {
                std::fs::read_to_string(path)
                    .map_err(|e| ActError(format!("{}: {e}", path.display())))?
            };
            openssl_verify(ctx, &ca_bundle, &pem, &path.display().to_string())?;
            (ctx.output)(format!(
                "{label}: valid until {}",
                certfleet_common::model::format_time(*new)
            ));
            renewed.push((label.clone(), *new));
        }
        // Pods restarted by the interrupted attempt already run on these files, unless this
        // attempt renewed something itself.
        let renewed_now = !runs.is_empty();
        for pod in STATIC_PODS {
            if !manifests.join(format!("{pod}.yaml")).is_file() {
                continue;
            }
            restarted.push(pod.to_string());
            let key = format!("restarted:{pod}");
            if !renewed_now && ctx.noted(&key).is_some() {
                (ctx.output)(format!(
                    "{pod}: already restarted on the renewed certificates by the interrupted attempt"
                ));
                continue;
            }
            restart_static_pod(ctx, &manifests, pod, poll, start_wait)?;
            ctx.note(&key, json!(true))?;
            ctx.crash_point("after-restart");
        }
        Ok(renewed)
    })();
    match attempt {
        Ok(renewed) => Ok(json!({
            "message": format!("renewed {} certificate(s); restarted {}", renewed.len(), if restarted.is_empty() { "no static pods".to_owned() } else { restarted.join(", ") }),
            "backup_id": m.id,
            "renewed": renewed.iter().map(|(l, _)| l.clone()).collect::<Vec<_>>(),
            "not_after": renewed.iter().map(|(_, t)| *t).min(),
            "restarted": restarted,
        })),
        Err(e) => {
            (ctx.output)(format!("failed: {e}; restoring backup {}", m.id));
            let restored = backup::restore(ctx.state, &m.id);
            // Pods restarted with the new certificates must load the old ones again.
            let mut after_rollback = Vec::new();
            if restored.is_ok() {
                for pod in &restarted {
                    if let Err(e2) = restart_static_pod(ctx, &manifests, pod, poll, start_wait) {
                        after_rollback.push(e2.0);
                    }
                }
            }
            Err(match restored {
                Ok(_) if after_rollback.is_empty() => ActError(format!(
                    "{e} (rolled back: {} file(s) restored from backup {}{})",
                    m.files.len(),
                    m.id,
                    if restarted.is_empty() {
                        String::new()
                    } else {
                        format!(", {} restarted on them", restarted.join(", "))
                    }
                )),
                Ok(_) => ActError(format!(
                    "{e} (rolled back: files restored from backup {}, but: {})",
                    m.id,
                    after_rollback.join("; ")
                )),
                Err(r) => ActError(format!(
                    "{e}; ROLLBACK FAILED: {r} (backup {} kept in {})",
                    m.id,
                    ctx.state.path().display()
                )),
            })
        }
    }
}

/// Running container ids of `pod` (`crictl ps --name ^POD$ -q`).
fn running(ctx: &ActContext<'_>, pod: &str) -> Result<Vec<String>, ActError> {
    let crictl = ctx.cfg.tool("crictl", "/usr/bin/crictl");
    let re = format!("^{pod}$");
    let out = crate::exec::run_ok(&crictl, &["ps", "--name", &re, "-q"], None, ctx.timeout)?;
    Ok(out.stdout.lines().map(str::to_owned).collect())
}

/// Restarts a static pod as reference C4 says: manifest out of the manifests directory until
/// the container is gone, back in, then wait for a new running container.
fn restart_static_pod(
    ctx: &ActContext<'_>,
    manifests: &Path,
    pod: &str,
    poll: Duration,
    start_wait: Duration,
) -> Result<(), ActError> {
    let manifest = manifests.join(format!("{pod}.yaml"));
    let hold_dir = hold_dir(manifests);
    std::fs::create_dir_all(&hold_dir)
        .map_err(|e| ActError(format!("{}: {e}", hold_dir.display())))?;
    let held = hold_dir.join(format!("{pod}.yaml"));
    let old = running(ctx, pod)?;
    (ctx.output)(format!("$ mv {} {}", manifest.display(), held.display()));
    std::fs::rename(&manifest, &held)
        .map_err(|e| ActError(format!("moving {} out: {e}", manifest.display())))?;
    ctx.crash_point("manifest-held");
    let gone_deadline = Instant::now() + start_wait.max(poll * 3);
    let gone = loop {
        std::thread::sleep(poll);
        match running(ctx, pod) {
            Ok(ids) if ids.iter().all(|i| !old.contains(i)) => break Ok(()),
            Ok(_) if Instant::now() > gone_deadline => {
                break Err(ActError(format!(
                    "{pod}: container still running {}s after its manifest was removed",
                    start_wait.as_secs()
                )));
            }
            Ok(_) => {}
            Err(e) => break Err(e),
        }
    };
    // Always put the manifest back.
    (ctx.output)(format!("$ mv {} {}", held.display(), manifest.display()));
    std::fs::rename(&held, &manifest).map_err(|e| {
        ActError(format!(
            "moving {} back to {}: {e} (the pod is stopped!)",
            held.display(),
            manifest.display()
        ))
    })?;
    gone?;
    let deadline = Instant::now() + start_wait;
    loop {
        std::thread::sleep(poll);
        let ids = running(ctx, pod)?;
        if let Some(id) = ids.iter().find(|i| !old.contains(i)) {
            (ctx.output)(format!(
                "{pod}: running as container {}",
                &id[..13.min(id.len())]
            ));
            return Ok(());
        }
        if Instant::now() > deadline {
            let crictl = ctx.cfg.tool("crictl", "/usr/bin/crictl");
            let re = format!("^{pod}$");
            let _ = ctx.run_ok(&crictl, &["ps", "-a", "--name", &re], None);
            return Err(ActError(format!(
                "{pod} did not come back within {}s after its manifest was restored (see crictl ps -a --name {pod}; crictl logs)",
                start_wait.as_secs()
            )));
        }
    }
}

/// `kubectl --kubeconfig KC version`: the cluster answers with these credentials.
fn kubectl_version(ctx: &ActContext<'_>, kc: &Path) -> Result<(), ActError> {
    let kubectl = ctx.cfg.tool("kubectl", "/usr/bin/kubectl");
    let k = kc.display().to_string();
    let out = ctx.run_ok(&kubectl, &["--kubeconfig", &k, "version"], None);
    out.map(|_| ())
        .map_err(|e| ActError(format!("{k} does not reach its cluster: {e}")))
}

/// Whether certificate `cert` (DER) carries a valid signature of CA `ca` (DER).
fn issued_by(cert: &[u8], ca: &[u8]) -> bool {
    match (
        x509_parser::parse_x509_certificate(cert),
        x509_parser::parse_x509_certificate(ca),
    ) {
        (Ok((_, c)), Ok((_, a))) => c.verify_signature(Some(a.public_key())).is_ok(),
        _ => false,
    }
}

/// CA and client certificates (DER) of the first cluster/user of kubeconfig text.
fn kubeconfig_ders(text: &[u8], what: &str) -> Result<(Vec<Vec<u8>>, Vec<u8>), ActError> {
    let facts = kubeconfig_facts(text, what)?;
    let ders = |pem: &str| -> Vec<Vec<u8>> {
        certfleet_common::pem::certificates(pem.as_bytes()).unwrap_or_default()
    };
    let client = ders(&facts.client_pem)
        .into_iter()
        .next()
        .unwrap_or_default();
    Ok((ders(&facts.ca_pem), client))
}

/// The admin workstation's admin-cluster files and the gkectl command line for `sub`.
struct AdminFiles {
    gkectl: PathBuf,
    config: PathBuf,
    kubeconfig: PathBuf,
}

impl AdminFiles {
    fn new(ctx: &ActContext<'_>) -> Result<Self, ActError> {
        let config = ctx.cfg.host_path(
            ctx.cfg
                .setting("gke.admin_config")
                .map(str::to_owned)
                .unwrap_or_else(|| format!("{}/admin-cluster.yaml", workdir(ctx))),
        );
        if !config.is_file() {
            return Err(ActError(format!(
                "admin cluster config {} not found (set gke.admin_config)",
                config.display()
            )));
        }
        Ok(AdminFiles {
            gkectl: ctx.cfg.tool("gkectl", "/usr/bin/gkectl"),
            config,
            kubeconfig: admin_kubeconfig(ctx),
        })
    }

    /// `gkectl update credentials certificate-authorities SUB --admin-cluster [EXTRA] --config
    /// CONFIG --kubeconfig KC`.
    fn args(&self, sub: &str, extra: &[&str], kc: &Path) -> Vec<String> {
        let mut v: Vec<String> = [
            "update",
            "credentials",
            "certificate-authorities",
            sub,
            "--admin-cluster",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v.extend([
            "--config".into(),
            self.config.display().to_string(),
            "--kubeconfig".into(),
            kc.display().to_string(),
        ]);
        v
    }

    /// Runs gkectl `sub` in the directory holding kubeconfig `kc` (B3: `--complete` looks for
    /// the updated kubeconfig in the current directory), streaming its lines.
    fn run(
        &self,
        ctx: &ActContext<'_>,
        sub: &str,
        extra: &[&str],
        kc: &Path,
    ) -> Result<crate::exec::ToolOutput, ActError> {
        let a = self.args(sub, extra, kc);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        ctx.run_ok_in(&self.gkectl, &a, None, kc.parent())
    }

    fn status(&self, ctx: &ActContext<'_>) -> Result<gke_admin::CaRotationStatus, ActError> {
        let out = self.run(ctx, "status", &[], &self.kubeconfig)?;
        gke_admin::parse_status(&out.stdout)
            .map_err(|e| ActError(format!("gkectl status for the admin cluster printed {e}")))
    }
}

fn fp_arg(args: &Value, name: &str) -> Result<String, ActError> {
    let fp = arg_str(args, name)?.to_ascii_lowercase();
    if fp.len() != 64 || !fp.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ActError(format!(
            "{name} {fp:?} is not a SHA-256 fingerprint"
        )));
    }
    Ok(fp)
}

/// `gke.admin_ca_rotate` (see the module table).
///
/// Idempotent by construction: before acting it reads from the admin cluster and the
/// kubeconfig where the rotation of the CA in scope stands (gkectl `status`, which CA issued
/// the kubeconfig's client certificate); a rotation already past the step's phase is not
/// started again, and `rotate --admin-cluster` itself resumes an interrupted run.
fn admin_ca_rotate(ctx: &ActContext<'_>, args: &Value) -> Result<Value, ActError> {
    let phase = arg_str(args, "phase")?;
    let old_fp = fp_arg(args, "ca_sha256")?;
    let f = AdminFiles::new(ctx)?;
    let kc_what = f.kubeconfig.display().to_string();
    let kc_bytes = std::fs::read(&f.kubeconfig).map_err(|e| ActError(format!("{kc_what}: {e}")))?;
    let (cas, client) = kubeconfig_ders(&kc_bytes, &kc_what)?;
    let old = cas
        .iter()
        .find(|d| certfleet_common::pki::sha256_hex(d) == old_fp);
    let client_from_old = old.is_some_and(|o| issued_by(&client, o));
    let first = f.status(ctx)?;
    match phase {
        "start" => {
            if first.done && !client_from_old {
                // Re-sent after the rotation went past this CA (e.g. a lost journal entry), or
                // this kubeconfig does not use the CA in scope at all: start nothing.
                return Ok(json!({
                    "message": format!("the admin cluster CA {} was already rotated (CAVersion {}); not starting another rotation", &old_fp[..16], first.ca_version),
                    "ca_version": first.ca_version,
                    "already": true,
                }));
            }
            if !first.done {
                (ctx.output)(format!(
                    "an admin cluster CA rotation (CAVersion {}) is in progress: resuming it",
                    first.ca_version
                ));
            }
            f.run(ctx, "rotate", &[], &f.kubeconfig)?;
            let s = f.status(ctx)?;
            if s.done {
                return Err(ActError(format!(
                    "gkectl rotate --admin-cluster returned but status says {} with CAVersion {}: expected the rotation to pause after its first half",
                    s.reason, s.ca_version
                )));
            }
            (ctx.output)(format!(
                "stage: CAVersion {} {}: first half done, paused for update-kubeconfig",
                s.ca_version,
                gke_admin::stage(&s).as_str()
            ));
            Ok(json!({
                "message": format!("first half of the admin cluster CA rotation done (CAVersion {}); paused for update-kubeconfig", s.ca_version),
                "ca_version": s.ca_version,
            }))
        }
        "complete" => {
            let want = args.get("ca_version").and_then(Value::as_u64).unwrap_or(0) as u32;
            if first.done && first.ca_version >= want && !client_from_old {
                return Ok(json!({
                    "message": format!("the admin cluster CA rotation with CAVersion {} is complete", first.ca_version),
                    "ca_version": first.ca_version,
                    "already": true,
                }));
            }
            if first.done {
                return Err(ActError(format!(
                    "no admin cluster CA rotation to complete: status says {} with CAVersion {} (expected {want})",
                    first.reason, first.ca_version
                )));
            }
            f.run(ctx, "rotate", &["--complete"], &f.kubeconfig)?;
            let s = f.status(ctx)?;
            (ctx.output)(format!(
                "stage: CAVersion {} {} ({})",
                s.ca_version,
                gke_admin::stage(&s).as_str(),
                s.reason
            ));
            if !s.done {
                return Err(ActError(format!(
                    "gkectl rotate --admin-cluster --complete returned but status says {} with CAVersion {}: {}",
                    s.reason, s.ca_version, s.message
                )));
            }
            Ok(json!({
                "message": format!("admin cluster CA rotation completed with CAVersion {}", s.ca_version),
                "ca_version": s.ca_version,
            }))
        }
        other => Err(ActError(format!(
            "phase {other:?} is not start or complete"
        ))),
    }
}

/// Whether kubeconfig text is in the state `expect` (`bundle` or `new`) relative to the old
/// CA `old_fp`; `Err` says why not.
fn admin_kubeconfig_state(
    text: &[u8],
    what: &str,
    expect: &str,
    old_fp: &str,
) -> Result<(), String> {
    let (cas, client) = kubeconfig_ders(text, what).map_err(|e| e.0)?;
    let fps: Vec<String> = cas
        .iter()
        .map(|d| certfleet_common::pki::sha256_hex(d))
        .collect();
    let short = |v: &[String]| {
        v.iter()
            .map(|f| f[..16].to_owned())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let news: Vec<&Vec<u8>> = cas
        .iter()
        .filter(|d| certfleet_common::pki::sha256_hex(d) != old_fp)
        .collect();
    let has_old = fps.iter().any(|f| f == old_fp);
    let ok = match expect {
        "bundle" => has_old && cas.len() == 2 && news.len() == 1,
        _ => !has_old && cas.len() == 1,
    };
    if !ok {
        return Err(format!(
            "{what} trusts CA(s) [{}]; expected {}",
            short(&fps),
            if expect == "bundle" {
                format!("the old CA {} and one new CA", &old_fp[..16])
            } else {
                format!("one new CA, not the old {}", &old_fp[..16])
            }
        ));
    }
    if !issued_by(&client, news[0]) {
        return Err(format!(
            "{what}: the client certificate was not issued by the new CA {}",
            &certfleet_common::pki::sha256_hex(news[0])[..16]
        ));
    }
    Ok(())
}

/// `gke.admin_kubeconfig_update` (see the module table).
///
/// Idempotent by construction: a kubeconfig already in the expected state (bundle or new CA,
/// client certificate from the new CA) is left alone; the real file is backed up once, and a
/// resumed step keeps that backup ([`backup::create`]).
fn admin_kubeconfig_update(ctx: &ActContext<'_>, args: &Value) -> Result<Value, ActError> {
    let expect = arg_str(args, "expect")?;
    if !matches!(expect, "bundle" | "new") {
        return Err(ActError(format!("expect {expect:?} is not bundle or new")));
    }
    let old_fp = fp_arg(args, "old_ca_sha256")?;
    let f = AdminFiles::new(ctx)?;
    let dest = f.kubeconfig.clone();
    let what = dest.display().to_string();
    let current = std::fs::read(&dest).map_err(|e| ActError(format!("{what}: {e}")))?;
    if admin_kubeconfig_state(&current, &what, expect, &old_fp).is_ok() {
        (ctx.output)(format!(
            "{what} is already in the expected state ({expect})"
        ));
        return Ok(json!({"message": format!("{what} already up to date"), "already": true}));
    }

    // gkectl rewrites the file it is given in place: give it a private copy, in a directory
    // of its own named like the original (`--complete` looks for that name in the CWD).
    let name = dest
        .file_name()
        .ok_or_else(|| ActError(format!("{what} has no file name")))?;
    let work = staging_dir(ctx)?.join(format!("{}.admin-kubeconfig", ctx.step_id));
    let _ = std::fs::remove_dir_all(&work);
    certfleet_common::atomic::create_private_dir(&work).map_err(|e| ActError(e.to_string()))?;
    let staged = work.join(name);
    certfleet_common::atomic::write_file(&staged, &current, 0o600)
        .map_err(|e| ActError(e.to_string()))?;
    let updated = (|| -> Result<Vec<u8>, ActError> {
        f.run(ctx, "update-kubeconfig", &[], &staged)?;
        let b =
            std::fs::read(&staged).map_err(|e| ActError(format!("{}: {e}", staged.display())))?;
        admin_kubeconfig_state(&b, "the updated kubeconfig", expect, &old_fp).map_err(ActError)?;
        let facts = kubeconfig_facts(&b, "the updated kubeconfig")?;
        openssl_verify(
            ctx,
            &facts.ca_pem,
            &facts.client_pem,
            "the updated kubeconfig",
        )?;
        Ok(b)
    })();
    let _ = std::fs::remove_dir_all(&work);
    let updated = updated?;

    let owner = std::fs::metadata(&dest).ok().map(|m| {
        use std::os::unix::fs::MetadataExt;
        (m.uid(), m.gid())
    });
    let m = backup::create(ctx.state, ctx.step_id, std::slice::from_ref(&dest))?;
    (ctx.output)(format!("backup {} holds {what}", m.id));
    let attempt = (|| -> Result<(), ActError> {
        backup::install(&dest, &updated, 0o600, owner)?;
        (ctx.output)(format!("installed {what} (mode 600)"));
        let back = std::fs::read(&dest).map_err(|e| ActError(format!("{what}: {e}")))?;
        if back != updated {
            return Err(ActError(format!(
                "{what} reads back different from what was written"
            )));
        }
        admin_kubeconfig_state(&back, &what, expect, &old_fp).map_err(ActError)?;
        kubectl_version(ctx, &dest)
    })();
    match attempt {
        Ok(()) => {
            let (cas, _) = kubeconfig_ders(&updated, &what)?;
            let fps: Vec<String> = cas
                .iter()
                .map(|d| certfleet_common::pki::sha256_hex(d))
                .collect();
            Ok(json!({
                "message": format!("{what} now trusts {}", fps.iter().map(|f| &f[..16]).collect::<Vec<_>>().join(" + ")),
                "backup_id": m.id,
                "ca_sha256": fps,
                "sha256": certfleet_common::pki::sha256_hex(&updated),
            }))
        }
        Err(e) => {
            (ctx.output)(format!(
                "verification failed: {e}; restoring backup {}",
                m.id
            ));
            Err(match backup::restore(ctx.state, &m.id) {
                Ok(_) => ActError(format!(
                    "{e} (rolled back: {what} restored from backup {})",
                    m.id
                )),
                Err(r) => ActError(format!("{e}; ROLLBACK FAILED: {r} (backup {} kept)", m.id)),
            })
        }
    }
}

//! GKE on VMware (Google Distributed Cloud for VMware) and kubeadm actions.
//!
//! | action | does |
//! |---|---|
//! | `gke.ca_rotate` | on an admin workstation: starts `gkectl update credentials certificate-authorities rotate` for a user cluster (or follows one already in progress, which gkectl refuses to start twice) and polls `status` through its stages to `CARotationCompleted`, streaming each stage |
//! | `gke.fetch_kubeconfig` | on an admin workstation: reads the user cluster's new admin kubeconfig from the admin cluster (`kubectl get secret admin -n CLUSTER -o jsonpath='{.data.admin\.conf}'`), checks it trusts exactly one CA that signed its client certificate, and stages it 0600 in the agent's state directory; only its path and fingerprints go back to the controller |
//! | `kubeconfig.install` | installs a staged kubeconfig on the SAME host: backup, atomic 0600 write keeping the owner, re-read and check its CA data holds exactly the expected CAs, restore on failure |
//! | `kubeadm.renew_all` | on a kubeadm control-plane node: backs up `/etc/kubernetes/pki` and `/etc/kubernetes/*.conf`, runs `kubeadm certs renew all`, checks every leaf got a later not-after and chains to its CA (`openssl verify`), restarts the static pods by moving each manifest out of `/etc/kubernetes/manifests` and back (reference C4, etcd last) and waits for a new running container (`crictl ps`); on any failure restores the backup byte for byte and restarts the pods again |
//!
//! Kubeconfigs with client keys are credentials: they never travel through the controller. A
//! workstation fetches its own copy from the admin cluster with its own admin kubeconfig, so a
//! recipe installing on several workstations runs fetch + install on each of them.
//!
//! Host layout (settings, defaults as gkectl and kubeadm write them, reference B6/C1):
//! `gke.workdir` (`/home/ubuntu`), `gke.admin_kubeconfig` (`WORKDIR/kubeconfig`),
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

fn fetch_kubeconfig(ctx: &ActContext<'_>, args: &Value) -> Result<Value, ActError> {
    let cluster = cluster_arg(args)?;
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
    let text = kubeconfig::decode_base64("admin.conf", out.stdout.trim())
        .map_err(|e| ActError(format!("secret admin in namespace {cluster}: {e}")))?;
    let what = format!("admin.conf of secret admin in namespace {cluster}");
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

    let before = leaf_not_afters(&pki, &kdir)?;
    let mut paths = files_under(&pki)?;
    let mut confs: Vec<PathBuf> = std::fs::read_dir(&kdir)
        .map_err(|e| ActError(format!("{}: {e}", kdir.display())))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().and_then(|e| e.to_str()) == Some("conf"))
        .collect();
    confs.sort();
    paths.extend(confs);
    let m = backup::create(ctx.state, ctx.step_id, &paths)?;
    (ctx.output)(format!(
        "backup {} holds {} file(s) of {} and {}/*.conf",
        m.id,
        m.files.len(),
        pki.display(),
        kdir.display()
    ));

    let mut restarted: Vec<String> = Vec::new();
    let attempt = (|| -> Result<Vec<(String, i64)>, ActError> {
        let pki_s = pki.display().to_string();
        let mut a = vec!["certs", "renew", "all"];
        if cert_dir_setting.is_some() {
            a.extend(["--cert-dir", &pki_s]);
        }
        let out = ctx.run_ok(&kubeadm, &a, None)?;
        if !out.stdout.contains("Done renewing certificates") {
            return Err(ActError(
                "kubeadm certs renew all did not report \"Done renewing certificates\"".into(),
            ));
        }
        if let Some(l) = out
            .stdout
            .lines()
            .find(|l| l.starts_with("MISSING!") || l.starts_with("Detected external"))
        {
            return Err(ActError(format!("kubeadm certs renew all: {l}")));
        }
        // Every leaf: later not-after than before, valid now, and signed by a CA in the pki.
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
        for (label, path, is_conf, old) in &before {
            let Some((_, _, _, new)) = after.iter().find(|(l, ..)| l == label) else {
                return Err(ActError(format!(
                    "{} is gone after kubeadm certs renew all",
                    path.display()
                )));
            };
            if *new <= *old || *new <= now {
                return Err(ActError(format!(
                    "{} was not renewed: not-after {} (before {})",
                    path.display(),
                    certfleet_common::model::format_time(*new),
                    certfleet_common::model::format_time(*old)
                )));
            }
            let pem = if *is_conf {
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
        for pod in STATIC_PODS {
            if manifests.join(format!("{pod}.yaml")).is_file() {
                restarted.push(pod.to_string());
                restart_static_pod(ctx, &manifests, pod, poll, start_wait)?;
            }
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
    let hold_dir = manifests
        .parent()
        .unwrap_or(manifests)
        .join("certfleet-manifests-hold");
    std::fs::create_dir_all(&hold_dir)
        .map_err(|e| ActError(format!("{}: {e}", hold_dir.display())))?;
    let held = hold_dir.join(format!("{pod}.yaml"));
    let old = running(ctx, pod)?;
    (ctx.output)(format!("$ mv {} {}", manifest.display(), held.display()));
    std::fs::rename(&manifest, &held)
        .map_err(|e| ActError(format!("moving {} out: {e}", manifest.display())))?;
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

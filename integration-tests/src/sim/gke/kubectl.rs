//! Simulated `kubectl get secret` against the admin cluster of a simulated GKE workstation: the
//! one read reference B2 needs after a user-cluster CA rotation,
//!
//! ```text
//! kubectl --kubeconfig ADMIN_CLUSTER_KUBECONFIG get secret admin \
//!     -n USER_CLUSTER_NAME -o jsonpath='{.data.admin\.conf}' | base64 --decode
//! ```
//!
//! The admin cluster holds one secret per user cluster namespace: `admin`, key `admin.conf`,
//! whose value the simulated gkectl re-issues at every rotation stage
//! ([`super::ClusterState::refresh_admin_secret`]). Like kubectl, the kubeconfig must trust the
//! admin cluster's CA (else `Unable to connect to the server: … x509: certificate signed by
//! unknown authority`), unknown namespaces and secrets are `Error from server (NotFound)`, and
//! jsonpath prints the base64 value without a newline. Supported: `get secret NAME -n NS
//! [-o jsonpath={.data.KEY}|-o json]`, `version` (reaches the cluster the kubeconfig's server
//! names: the admin cluster or a user cluster), `--kubeconfig`/`KUBECONFIG`, `--namespace`.
//! A kubeconfig gets through when its CA data holds the CA the API server serves from and its
//! client certificate is signed by a CA the cluster still accepts and is inside its validity
//! period (an expired one: `error: You must be logged in to the server (Unauthorized)`)
//! ([`super::ClusterState::check_access`]).

use std::io::Write as _;

use anyhow::Result;
use base64::Engine as _;

use super::{GkeState, SimHost};

fn fail(msg: &str) -> Result<i32> {
    eprintln!("{msg}");
    Ok(1)
}

/// Runs `kubectl ARGS`; returns the exit code.
pub fn run(host: &SimHost, args: &[String]) -> Result<i32> {
    let mut kubeconfig = std::env::var("KUBECONFIG").ok().filter(|v| !v.is_empty());
    let mut namespace: Option<String> = None;
    let mut output: Option<String> = None;
    let mut positional: Vec<String> = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) if n.starts_with('-') => (n, Some(v.to_owned())),
            _ => (a, None),
        };
        match name {
            "--kubeconfig" | "-n" | "--namespace" | "-o" | "--output" => {
                let v = match inline {
                    Some(v) => v,
                    None => {
                        i += 1;
                        match args.get(i) {
                            Some(v) => v.clone(),
                            None => {
                                return fail(&format!("error: flag needs an argument: {name}"));
                            }
                        }
                    }
                };
                match name {
                    "--kubeconfig" => kubeconfig = Some(v),
                    "-n" | "--namespace" => namespace = Some(v),
                    _ => output = Some(v),
                }
            }
            n if n.starts_with('-') => return fail(&format!("error: unknown flag: {n}")),
            _ => positional.push(a.to_owned()),
        }
        i += 1;
    }
    let p: Vec<&str> = positional.iter().map(String::as_str).collect();
    let secret = match p.as_slice() {
        ["get", "secret" | "secrets", name] => *name,
        ["version"] => return version(host, kubeconfig.as_deref()),
        ["get", ..] => {
            eprintln!(
                "certfleet-sim: only `kubectl get secret NAME` is simulated, not {:?}",
                p
            );
            return Ok(70);
        }
        [first, ..] => {
            return fail(&format!(
                "error: unknown command \"{first}\" for \"kubectl\""
            ));
        }
        [] => return fail("error: a command is required"),
    };
    let Some(kubeconfig) = kubeconfig else {
        return fail(
            "The connection to the server localhost:8080 was refused - did you specify the right host or port?",
        );
    };
    let kc_text = match std::fs::read_to_string(&kubeconfig) {
        Ok(t) => t,
        Err(_) => {
            return fail(&format!(
                "error: stat {kubeconfig}: no such file or directory"
            ));
        }
    };
    let state = GkeState::load(host)?;
    if let Err(e) = state.admin.check_access(&kc_text) {
        return fail(&e);
    }
    let ns = namespace.unwrap_or_else(|| "default".into());
    let Some(cluster) = state.users.get(&ns) else {
        return fail(&format!(
            "Error from server (NotFound): namespaces \"{ns}\" not found"
        ));
    };
    if secret != "admin" || cluster.admin_conf.is_empty() {
        return fail(&format!(
            "Error from server (NotFound): secrets \"{secret}\" not found"
        ));
    }
    let value = base64::engine::general_purpose::STANDARD.encode(&cluster.admin_conf);
    let mut out = std::io::stdout();
    match output.as_deref() {
        None => {
            writeln!(out, "NAME    TYPE     DATA   AGE")?;
            writeln!(out, "admin   Opaque   1      5d")?;
        }
        Some("json") => {
            let v = serde_json::json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "admin", "namespace": ns},
                "type": "Opaque",
                "data": {"admin.conf": value},
            });
            writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        }
        Some(o) if o.starts_with("jsonpath=") => {
            let expr = o.trim_start_matches("jsonpath=");
            let expr = expr.trim_matches('\'');
            let Some(path) = expr
                .strip_prefix("{.data.")
                .and_then(|r| r.strip_suffix('}'))
            else {
                eprintln!("certfleet-sim: jsonpath {expr:?} is not simulated (only {{.data.KEY}})");
                return Ok(70);
            };
            // jsonpath escapes dots in keys with a backslash: `admin\.conf`.
            let key = path.replace("\\.", ".");
            if key != "admin.conf" {
                return Ok(0);
            }
            write!(out, "{value}")?;
        }
        Some(o) => {
            return fail(&format!(
                "error: unable to match a printer suitable for the output format \"{o}\", allowed formats are: custom-columns,custom-columns-file,go-template,go-template-file,json,jsonpath,jsonpath-as-json,jsonpath-file,name,template,templatefile,wide,yaml"
            ));
        }
    }
    out.flush()?;
    Ok(0)
}

/// `kubectl version` against the cluster named by the kubeconfig's server URL.
fn version(host: &SimHost, kubeconfig: Option<&str>) -> Result<i32> {
    println!("Client Version: v1.28.7");
    println!("Kustomize Version: v5.0.4-0.20230601165947-6ce0bf390ce3");
    let Some(kubeconfig) = kubeconfig else {
        return fail(
            "The connection to the server localhost:8080 was refused - did you specify the right host or port?",
        );
    };
    let Ok(text) = std::fs::read_to_string(kubeconfig) else {
        return fail(&format!(
            "error: stat {kubeconfig}: no such file or directory"
        ));
    };
    let Some((_, server, _)) = super::kubeconfig::first_names(&text) else {
        return fail(&format!(
            "error: error loading config file \"{kubeconfig}\": no cluster in kubeconfig"
        ));
    };
    let state = GkeState::load(host)?;
    let Some(cluster) = std::iter::once(&state.admin)
        .chain(state.users.values())
        .find(|c| c.server == server)
    else {
        return fail(&format!(
            "Unable to connect to the server: dial tcp {}: connect: no route to host",
            server.trim_start_matches("https://")
        ));
    };
    if let Err(e) = cluster.check_access(&text) {
        return fail(&e);
    }
    println!("Server Version: v1.28.7-gke.1700");
    Ok(0)
}

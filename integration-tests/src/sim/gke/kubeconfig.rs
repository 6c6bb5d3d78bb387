//! Kubeconfig files as `gkectl` and `kubeadm` write them (client-go `v1.Config`, keys in
//! kubectl's alphabetical order), with real certificates embedded as base64 of PEM.

use base64::Engine as _;
use serde::Serialize;

/// One kubeconfig: one cluster, one user, one context, as gkectl and kubeadm write them.
pub struct KubeconfigSpec<'a> {
    /// `clusters[0].name`.
    pub cluster: &'a str,
    /// API server URL.
    pub server: &'a str,
    /// CA certificates (PEM), concatenated into `certificate-authority-data` in this order.
    pub ca_pems: &'a [&'a str],
    /// `users[0].name`.
    pub user: &'a str,
    /// How the client authenticates.
    pub credentials: Credentials<'a>,
}

/// A kubeconfig user's credentials.
pub enum Credentials<'a> {
    /// Embedded `client-certificate-data` / `client-key-data` (PEM).
    Embedded {
        /// Certificate PEM.
        cert_pem: &'a str,
        /// Key PEM.
        key_pem: &'a str,
    },
    /// `client-certificate` / `client-key` paths (the kubelet's rotating pair).
    Files {
        /// Certificate path.
        cert: &'a str,
        /// Key path.
        key: &'a str,
    },
}

#[derive(Serialize)]
struct Config<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'a str,
    clusters: Vec<NamedCluster<'a>>,
    contexts: Vec<NamedContext<'a>>,
    #[serde(rename = "current-context")]
    current_context: String,
    kind: &'a str,
    preferences: std::collections::BTreeMap<String, String>,
    users: Vec<NamedUser<'a>>,
}

#[derive(Serialize)]
struct NamedCluster<'a> {
    cluster: Cluster<'a>,
    name: &'a str,
}

#[derive(Serialize)]
struct Cluster<'a> {
    #[serde(rename = "certificate-authority-data")]
    certificate_authority_data: String,
    server: &'a str,
}

#[derive(Serialize)]
struct NamedContext<'a> {
    context: Context<'a>,
    name: String,
}

#[derive(Serialize)]
struct Context<'a> {
    cluster: &'a str,
    user: &'a str,
}

#[derive(Serialize)]
struct NamedUser<'a> {
    name: &'a str,
    user: User<'a>,
}

#[derive(Serialize)]
struct User<'a> {
    #[serde(rename = "client-certificate", skip_serializing_if = "Option::is_none")]
    client_certificate: Option<&'a str>,
    #[serde(
        rename = "client-certificate-data",
        skip_serializing_if = "Option::is_none"
    )]
    client_certificate_data: Option<String>,
    #[serde(rename = "client-key", skip_serializing_if = "Option::is_none")]
    client_key: Option<&'a str>,
    #[serde(rename = "client-key-data", skip_serializing_if = "Option::is_none")]
    client_key_data: Option<String>,
}

/// Base64 as Go encodes `[]byte`.
pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Renders the kubeconfig YAML.
pub fn render(spec: &KubeconfigSpec<'_>) -> anyhow::Result<String> {
    let user = match &spec.credentials {
        Credentials::Embedded { cert_pem, key_pem } => User {
            client_certificate: None,
            client_certificate_data: Some(b64(cert_pem)),
            client_key: None,
            client_key_data: Some(b64(key_pem)),
        },
        Credentials::Files { cert, key } => User {
            client_certificate: Some(cert),
            client_certificate_data: None,
            client_key: Some(key),
            client_key_data: None,
        },
    };
    let context = format!("{}@{}", spec.user, spec.cluster);
    let cfg = Config {
        api_version: "v1",
        clusters: vec![NamedCluster {
            cluster: Cluster {
                certificate_authority_data: b64(spec.ca_pems.concat()),
                server: spec.server,
            },
            name: spec.cluster,
        }],
        contexts: vec![NamedContext {
            context: Context {
                cluster: spec.cluster,
                user: spec.user,
            },
            name: context.clone(),
        }],
        current_context: context,
        kind: "Config",
        preferences: Default::default(),
        users: vec![NamedUser {
            name: spec.user,
            user,
        }],
    };
    Ok(serde_norway::to_string(&cfg)?)
}

/// The first cluster's decoded `certificate-authority-data` (PEM text) of a kubeconfig file,
/// for the simulated tools' own checks.
pub fn first_cluster_ca(text: &str) -> Option<String> {
    let v: serde_norway::Value = serde_norway::from_str(text).ok()?;
    let data = v
        .get("clusters")?
        .get(0)?
        .get("cluster")?
        .get("certificate-authority-data")?
        .as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .ok()?;
    String::from_utf8(bytes).ok()
}

/// The first user's decoded `client-certificate-data` (PEM text).
pub fn first_user_cert(text: &str) -> Option<String> {
    let v: serde_norway::Value = serde_norway::from_str(text).ok()?;
    let data = v
        .get("users")?
        .get(0)?
        .get("user")?
        .get("client-certificate-data")?
        .as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .ok()?;
    String::from_utf8(bytes).ok()
}

/// The first user's decoded `client-key-data` (PEM text).
pub fn first_user_key(text: &str) -> Option<String> {
    let v: serde_norway::Value = serde_norway::from_str(text).ok()?;
    let data = v
        .get("users")?
        .get(0)?
        .get("user")?
        .get("client-key-data")?
        .as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .ok()?;
    String::from_utf8(bytes).ok()
}

/// `(cluster name, server, user name)` of the first cluster/user of a kubeconfig.
pub fn first_names(text: &str) -> Option<(String, String, String)> {
    let v: serde_norway::Value = serde_norway::from_str(text).ok()?;
    let c = v.get("clusters")?.get(0)?;
    let u = v.get("users")?.get(0)?;
    Some((
        c.get("name")?.as_str()?.to_owned(),
        c.get("cluster")?.get("server")?.as_str()?.to_owned(),
        u.get("name")?.as_str()?.to_owned(),
    ))
}

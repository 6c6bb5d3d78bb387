//! vCenter's SOAP API (vim25), as much of it as certfleet needs for ESXi host certificates.
//!
//! The agent on a VCSA has no agent on the ESXi hosts to talk to: it asks vCenter. This module
//! is the whole client: session login (`SessionManager.Login`, the password read from a file),
//! `RetrievePropertiesEx` over a `ContainerView` of every `HostSystem` and cluster,
//! `OptionManager.QueryOptions` for the `vpxd.certmgmt.*` settings, the `CertificateManager`
//! refresh methods, `DisconnectHost_Task` / `ReconnectHost_Task`, task polling, and
//! `HostVsanInternalSystem.QuerySyncingVsanObjects` (vSAN resync) for connected vSAN members.
//!
//! Requests follow the vim25 WSDL as govmomi generates it (`vim25/methods`, `vim25/types`);
//! they were exercised against govmomi's own simulator (vcsim, extended where it lacks a call:
//! see `integration-tests/vcsim/main.go`). HTTP/1.1 is spoken directly over rustls (ring): one
//! connection per call, `Connection: close`, the session in the `vmware_soap_session` cookie.
//! The server is verified against a configured CA file (the VMCA root on a VCSA); `http://`
//! is accepted for loopback tests only when asked for explicitly.
//!
//! Unverified against a real vCenter: the encoding of `config.certificate` (vcsim sends the PEM
//! as the text of one `<byte>` element; the WSDL's `ArrayOfByte` is one signed `<byte>` per
//! octet — both are accepted); the JSON layout of `QuerySyncingVsanObjects`' answer (see
//! [`count_syncing_objects`]).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;

/// Errors of the vim25 client.
#[derive(Debug, thiserror::Error)]
pub enum VimError {
    /// The vCenter URL cannot be used.
    #[error("vCenter URL {url}: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// A file (password, CA) could not be read.
    #[error("reading {path}: {source}")]
    File {
        /// Path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The CA file holds no usable certificate.
    #[error("CA file {path}: {reason}")]
    Ca {
        /// Path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Connecting or talking to vCenter failed.
    #[error("vCenter {url}: {method}: {reason}")]
    Transport {
        /// URL.
        url: String,
        /// vim25 method being called.
        method: String,
        /// What went wrong.
        reason: String,
    },
    /// vCenter answered with a SOAP fault.
    #[error("vCenter {url}: {method} failed: {fault}: {message}")]
    Fault {
        /// URL.
        url: String,
        /// Method.
        method: String,
        /// Fault type (`InvalidLogin`, `HostNotConnected`, …).
        fault: String,
        /// Fault string.
        message: String,
    },
    /// The answer was not what the vim25 types describe.
    #[error("vCenter {url}: {method}: unexpected answer: {reason}")]
    Answer {
        /// URL.
        url: String,
        /// Method.
        method: String,
        /// What was wrong.
        reason: String,
    },
    /// A task ended in error.
    #[error("vCenter task {task} ({method}) failed: {fault}: {message}")]
    Task {
        /// Task moref.
        task: String,
        /// Method that created it.
        method: String,
        /// Fault type.
        fault: String,
        /// Localized message.
        message: String,
    },
    /// A task did not finish in time.
    #[error("vCenter task {task} ({method}) still {state} after {waited:?}")]
    TaskTimeout {
        /// Task moref.
        task: String,
        /// Method.
        method: String,
        /// Last state.
        state: String,
        /// How long we waited.
        waited: Duration,
    },
}

impl VimError {
    /// The fault type when vCenter refused the call or the task failed (`HostNotConnected`, …).
    pub fn fault(&self) -> Option<&str> {
        match self {
            VimError::Fault { fault, .. } | VimError::Task { fault, .. } => Some(fault),
            _ => None,
        }
    }
}

/// How to reach and log in to vCenter.
#[derive(Clone, Debug)]
pub struct VimSettings {
    /// SDK URL, e.g. `https://localhost/sdk`.
    pub url: String,
    /// SSO user (`administrator@vsphere.local`, or a dedicated certfleet user).
    pub user: String,
    /// File holding the user's password (trailing newline ignored).
    pub password_file: PathBuf,
    /// PEM file of the CA(s) that sign vCenter's Machine SSL certificate.
    pub ca_file: Option<PathBuf>,
    /// Per-call timeout.
    pub timeout: Duration,
}

/// A managed object reference (`type` and value, e.g. `HostSystem` / `host-42`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MoRef {
    /// Managed object type.
    pub kind: String,
    /// Its id.
    pub value: String,
}

impl MoRef {
    fn new(kind: &str, value: &str) -> Self {
        MoRef {
            kind: kind.into(),
            value: value.into(),
        }
    }

    fn xml(&self, element: &str) -> String {
        format!(
            "<{element} type=\"{}\">{}</{element}>",
            escape(&self.kind),
            escape(&self.value)
        )
    }
}

impl std::fmt::Display for MoRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

/// What vCenter knows of one ESXi host.
#[derive(Clone, Debug)]
pub struct HostInfo {
    /// The host's moref.
    pub moref: MoRef,
    /// Its name in the inventory (usually the FQDN).
    pub name: String,
    /// Cluster name (empty for a standalone host).
    pub cluster: String,
    /// `connected`, `disconnected` or `notResponding`.
    pub connection_state: String,
    /// In maintenance mode.
    pub in_maintenance_mode: bool,
    /// `config.certificate`: the host certificate (PEM bytes as vCenter holds them); empty
    /// when vCenter has none (e.g. a disconnected host).
    pub certificate: Vec<u8>,
    /// `runtime.dasHostState.state`: the host's vSphere HA (FDM) agent state (`master`,
    /// `connectedToMaster`, `networkIsolated`, …); empty when HA is not configured.
    pub ha_state: String,
    /// `config.vsanHostConfig.enabled`: the host is a member of a vSAN cluster.
    pub vsan_enabled: bool,
    /// `configManager.vsanInternalSystem` (vSAN hosts).
    pub vsan_internal_system: Option<MoRef>,
    /// vSAN objects this host reports resyncing (`QuerySyncingVsanObjects`), asked of connected
    /// vSAN members only (None otherwise); `Err` says why the question failed.
    pub vsan_syncing: Option<Result<u64, String>>,
}

/// One `OptionValue` of an `OptionManager`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OptionSetting {
    /// Key, e.g. `vpxd.certmgmt.mode`.
    pub key: String,
    /// Value as text.
    pub value: String,
}

struct Endpoint {
    url: String,
    host: String,
    port: u16,
    path: String,
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// A logged-in session.
pub struct Session {
    ep: Endpoint,
    cookie: String,
    timeout: Duration,
    content: ServiceContent,
}

#[derive(Clone, Debug, Default)]
struct ServiceContent {
    property_collector: Option<MoRef>,
    view_manager: Option<MoRef>,
    root_folder: Option<MoRef>,
    setting: Option<MoRef>,
    certificate_manager: Option<MoRef>,
    session_manager: Option<MoRef>,
}

/// Escapes text for an XML element or attribute.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

fn envelope(body: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
<soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\" \
xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xmlns=\"urn:vim25\">\
<soapenv:Body>{body}</soapenv:Body></soapenv:Envelope>"
    )
}

fn parse_url(url: &str, allow_http: bool) -> Result<(bool, String, u16, String), VimError> {
    let bad = |reason: &str| VimError::Url {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        if !allow_http {
            return Err(bad("plain http is refused (use https://)"));
        }
        (false, r)
    } else {
        return Err(bad("must start with https://"));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/sdk"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => (
            h.trim_matches(['[', ']']).to_owned(),
            p.parse::<u16>().map_err(|_| bad("bad port"))?,
        ),
        _ => (authority.to_owned(), if tls { 443 } else { 80 }),
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    Ok((tls, host, port, path.to_owned()))
}

fn tls_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, VimError> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|source| VimError::File {
            path: path.to_owned(),
            source,
        })?;
        let ders = certfleet_common::pem::certificates(&pem).map_err(|e| VimError::Ca {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        for der in ders {
            roots.add(der.into()).map_err(|e| VimError::Ca {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        }
    }
    if roots.is_empty() {
        return Err(VimError::Ca {
            path: ca_file.map(Path::to_owned).unwrap_or_default(),
            reason: "no CA certificate to verify vCenter with (set vsphere.vim_ca_file)".into(),
        });
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| VimError::Ca {
            path: ca_file.map(Path::to_owned).unwrap_or_default(),
            reason: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// An HTTP answer: status, headers (names lowercased), body.
pub type HttpReply = (u16, Vec<(String, String)>, Vec<u8>);

/// One HTTP exchange.
fn http_post(
    ep: &Endpoint,
    method: &str,
    cookie: &str,
    body: &str,
    timeout: Duration,
) -> Result<HttpReply, VimError> {
    let err = |reason: String| VimError::Transport {
        url: ep.url.clone(),
        method: method.to_owned(),
        reason,
    };
    let addr = (ep.host.as_str(), ep.port)
        .to_socket_addrs()
        .map_err(|e| err(format!("resolving {}: {e}", ep.host)))?
        .next()
        .ok_or_else(|| err(format!("{} has no address", ep.host)))?;
    let tcp = TcpStream::connect_timeout(&addr, timeout).map_err(|e| err(e.to_string()))?;
    tcp.set_read_timeout(Some(timeout)).ok();
    tcp.set_write_timeout(Some(timeout)).ok();
    let mut request = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: text/xml; charset=utf-8\r\n\
SOAPAction: \"urn:vim25/7.0\"\r\nContent-Length: {}\r\nConnection: close\r\nUser-Agent: certfleet-agent\r\n",
        ep.path,
        ep.host,
        body.len()
    );
    if !cookie.is_empty() {
        request.push_str(&format!("Cookie: vmware_soap_session={cookie}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    let mut raw = Vec::new();
    match &ep.tls {
        Some(cfg) => {
            let name = ServerName::try_from(ep.host.clone())
                .map_err(|e| err(format!("server name {}: {e}", ep.host)))?;
            let conn =
                rustls::ClientConnection::new(cfg.clone(), name).map_err(|e| err(e.to_string()))?;
            let mut s = rustls::StreamOwned::new(conn, tcp);
            s.write_all(request.as_bytes())
                .map_err(|e| err(e.to_string()))?;
            match s.read_to_end(&mut raw) {
                Ok(_) => {}
                // Servers that close without close_notify: the body is complete when
                // Content-Length or the last chunk says so (checked below).
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
                Err(e) => return Err(err(e.to_string())),
            }
        }
        None => {
            let mut s = tcp;
            s.write_all(request.as_bytes())
                .map_err(|e| err(e.to_string()))?;
            s.read_to_end(&mut raw).map_err(|e| err(e.to_string()))?;
        }
    }
    parse_http(&raw).map_err(err)
}

/// Parses an HTTP/1.1 response (Content-Length, chunked, or until close).
pub fn parse_http(raw: &[u8]) -> Result<HttpReply, String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers in the response")?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| "headers are not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let code: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let header = |k: &str| {
        headers
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    };
    let rest = &raw[split + 4..];
    let body = if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            let nl = rest[at..]
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or("truncated chunk size")?;
            let size_txt = std::str::from_utf8(&rest[at..at + nl]).map_err(|_| "bad chunk size")?;
            let size = usize::from_str_radix(size_txt.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| format!("bad chunk size {size_txt:?}"))?;
            at += nl + 2;
            if size == 0 {
                break;
            }
            let end = at
                .checked_add(size)
                .filter(|e| *e <= rest.len())
                .ok_or("truncated chunk")?;
            out.extend_from_slice(&rest[at..end]);
            at = end + 2;
        }
        out
    } else if let Some(len) = header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| format!("bad Content-Length {len:?}"))?;
        if rest.len() < len {
            return Err(format!("truncated body: {} of {len} bytes", rest.len()));
        }
        rest[..len].to_vec()
    } else {
        rest.to_vec()
    };
    Ok((code, headers, body))
}

/// The body element of a SOAP answer, or the fault in it.
fn soap_body<'a>(
    doc: &'a roxmltree::Document<'a>,
) -> Result<roxmltree::Node<'a, 'a>, (String, String)> {
    let body = doc
        .descendants()
        .find(|n| n.has_tag_name(("http://schemas.xmlsoap.org/soap/envelope/", "Body")))
        .ok_or_else(|| ("NoBody".to_owned(), "no SOAP Body".to_owned()))?;
    let first = body
        .children()
        .find(|n| n.is_element())
        .ok_or_else(|| ("EmptyBody".to_owned(), "empty SOAP Body".to_owned()))?;
    if first.tag_name().name() == "Fault" {
        let msg = child_text(first, "faultstring").unwrap_or_default();
        let detail = first
            .children()
            .find(|n| n.tag_name().name() == "detail")
            .and_then(|d| d.children().find(|n| n.is_element()));
        let kind = detail
            .map(|d| {
                xsi_type(d)
                    .unwrap_or_else(|| d.tag_name().name().trim_end_matches("Fault").to_owned())
            })
            .unwrap_or_else(|| "Fault".to_owned());
        return Err((kind, msg));
    }
    Ok(first)
}

fn xsi_type(n: roxmltree::Node<'_, '_>) -> Option<String> {
    n.attributes()
        .find(|a| a.name() == "type")
        .map(|a| a.value().rsplit(':').next().unwrap_or("").to_owned())
}

fn child<'a>(n: roxmltree::Node<'a, 'a>, name: &str) -> Option<roxmltree::Node<'a, 'a>> {
    n.children().find(|c| c.tag_name().name() == name)
}

fn child_text(n: roxmltree::Node<'_, '_>, name: &str) -> Option<String> {
    n.children()
        .find(|c| c.tag_name().name() == name)
        .map(|c| c.text().unwrap_or("").to_owned())
}

fn moref_of(n: roxmltree::Node<'_, '_>) -> Option<MoRef> {
    let kind = n.attribute("type")?;
    Some(MoRef::new(kind, n.text().unwrap_or("")))
}

/// Decodes an `ArrayOfByte` value: one signed `<byte>` per octet (the WSDL), or the whole
/// content as the text of a single element (what vcsim sends).
pub fn decode_byte_array(val: roxmltree::Node<'_, '_>) -> Vec<u8> {
    let bytes: Vec<roxmltree::Node<'_, '_>> = val
        .children()
        .filter(|c| c.is_element() && c.tag_name().name() == "byte")
        .collect();
    let numeric: Option<Vec<u8>> = bytes
        .iter()
        .map(|b| {
            b.text()
                .unwrap_or("")
                .trim()
                .parse::<i8>()
                .ok()
                .map(|v| v as u8)
        })
        .collect();
    match numeric {
        Some(v) if !v.is_empty() => v,
        _ => bytes
            .iter()
            .flat_map(|b| b.text().unwrap_or("").as_bytes().to_vec())
            .collect(),
    }
}

impl Session {
    /// Logs in with the configured user; the password is read from its file now and not kept.
    pub fn login(s: &VimSettings) -> Result<Session, VimError> {
        Self::login_inner(s, false)
    }

    /// As [`Session::login`], also accepting `http://` (loopback tests of the simulator).
    pub fn login_allowing_http(s: &VimSettings) -> Result<Session, VimError> {
        Self::login_inner(s, true)
    }

    fn login_inner(s: &VimSettings, allow_http: bool) -> Result<Session, VimError> {
        let (tls, host, port, path) = parse_url(&s.url, allow_http)?;
        let tls = if tls {
            Some(tls_config(s.ca_file.as_deref())?)
        } else {
            None
        };
        let password =
            std::fs::read_to_string(&s.password_file).map_err(|source| VimError::File {
                path: s.password_file.clone(),
                source,
            })?;
        let password = password.trim_end_matches(['\r', '\n']);
        let mut session = Session {
            ep: Endpoint {
                url: s.url.clone(),
                host,
                port,
                path,
                tls,
            },
            cookie: String::new(),
            timeout: s.timeout,
            content: ServiceContent::default(),
        };
        session.content = session.call("RetrieveServiceContent", |b| {
            let get = |n: &str| child(b, "returnval").and_then(|r| child(r, n)).and_then(moref_of);
            Ok(ServiceContent {
                property_collector: get("propertyCollector"),
                view_manager: get("viewManager"),
                root_folder: get("rootFolder"),
                setting: get("setting"),
                certificate_manager: get("certificateManager"),
                session_manager: get("sessionManager"),
            })
        }, "<RetrieveServiceContent><_this type=\"ServiceInstance\">ServiceInstance</_this></RetrieveServiceContent>")?;
        let sm = session.need(&session.content.session_manager, "Login", "sessionManager")?;
        let body = format!(
            "<Login>{}<userName>{}</userName><password>{}</password></Login>",
            sm.xml("_this"),
            escape(&s.user),
            escape(password)
        );
        let (_, headers) = session.call_raw("Login", &body)?;
        let cookie = headers
            .iter()
            .filter(|(k, _)| k == "set-cookie")
            .find_map(|(_, v)| {
                v.split(';')
                    .next()?
                    .trim()
                    .strip_prefix("vmware_soap_session=")
                    .map(|c| c.trim_matches('"').to_owned())
            })
            .ok_or_else(|| VimError::Answer {
                url: s.url.clone(),
                method: "Login".into(),
                reason: "no vmware_soap_session cookie".into(),
            })?;
        session.cookie = cookie;
        tracing::info!(url = %s.url, user = %s.user, "logged in to vCenter");
        Ok(session)
    }

    fn need(&self, r: &Option<MoRef>, method: &str, what: &str) -> Result<MoRef, VimError> {
        r.clone().ok_or_else(|| VimError::Answer {
            url: self.ep.url.clone(),
            method: method.into(),
            reason: format!("ServiceContent has no {what}"),
        })
    }

    fn call_raw(
        &self,
        method: &str,
        body: &str,
    ) -> Result<(String, Vec<(String, String)>), VimError> {
        let (code, headers, raw) = http_post(
            &self.ep,
            method,
            &self.cookie,
            &envelope(body),
            self.timeout,
        )?;
        let text = String::from_utf8(raw).map_err(|_| VimError::Answer {
            url: self.ep.url.clone(),
            method: method.into(),
            reason: "the answer is not UTF-8".into(),
        })?;
        let doc = roxmltree::Document::parse(&text).map_err(|e| VimError::Answer {
            url: self.ep.url.clone(),
            method: method.into(),
            reason: format!("HTTP {code}, not XML: {e}"),
        })?;
        soap_body(&doc).map_err(|(fault, message)| VimError::Fault {
            url: self.ep.url.clone(),
            method: method.into(),
            fault,
            message,
        })?;
        Ok((text, headers))
    }

    fn call<T>(
        &self,
        method: &str,
        parse: impl FnOnce(roxmltree::Node<'_, '_>) -> Result<T, String>,
        body: &str,
    ) -> Result<T, VimError> {
        let (text, _) = self.call_raw(method, body)?;
        let doc = roxmltree::Document::parse(&text).expect("parsed once already");
        let b = soap_body(&doc).expect("checked in call_raw");
        parse(b).map_err(|reason| VimError::Answer {
            url: self.ep.url.clone(),
            method: method.into(),
            reason,
        })
    }

    /// Every ESXi host vCenter manages, with its certificate and state.
    pub fn hosts(&self) -> Result<Vec<HostInfo>, VimError> {
        let vm = self.need(
            &self.content.view_manager,
            "CreateContainerView",
            "viewManager",
        )?;
        let root = self.need(
            &self.content.root_folder,
            "CreateContainerView",
            "rootFolder",
        )?;
        let pc = self.need(
            &self.content.property_collector,
            "RetrievePropertiesEx",
            "propertyCollector",
        )?;
        let view = self.call(
            "CreateContainerView",
            |b| child(b, "returnval").and_then(moref_of).ok_or("no view".into()),
            &format!(
                "<CreateContainerView>{}{}<type>HostSystem</type><type>ClusterComputeResource</type><recursive>true</recursive></CreateContainerView>",
                vm.xml("_this"),
                root.xml("container")
            ),
        )?;
        let body = format!(
            "<RetrievePropertiesEx>{}<specSet>\
<propSet><type>HostSystem</type><pathSet>name</pathSet><pathSet>parent</pathSet>\
<pathSet>config.certificate</pathSet><pathSet>runtime.connectionState</pathSet>\
<pathSet>runtime.inMaintenanceMode</pathSet><pathSet>runtime.dasHostState</pathSet>\
<pathSet>config.vsanHostConfig.enabled</pathSet>\
<pathSet>configManager.vsanInternalSystem</pathSet></propSet>\
<propSet><type>ClusterComputeResource</type><pathSet>name</pathSet></propSet>\
<objectSet>{}<skip>true</skip><selectSet xsi:type=\"TraversalSpec\"><name>view</name>\
<type>ContainerView</type><path>view</path><skip>false</skip></selectSet></objectSet>\
</specSet><options><maxObjects>10000</maxObjects></options></RetrievePropertiesEx>",
            pc.xml("_this"),
            view.xml("obj")
        );
        let result = self.call("RetrievePropertiesEx", |b| Ok(parse_hosts(b)), &body);
        // The view is ours: destroy it whatever happened (a leak costs vCenter memory).
        let _ = self.call_raw(
            "DestroyView",
            &format!("<DestroyView>{}</DestroyView>", view.xml("_this")),
        );
        let (mut hosts, clusters) = result?;
        for h in &mut hosts {
            if let Some(name) = clusters.get(&h.cluster) {
                h.cluster = name.clone();
            } else {
                h.cluster.clear();
            }
        }
        hosts.sort_by(|a, b| (&a.cluster, &a.name).cmp(&(&b.cluster, &b.name)));
        for h in &mut hosts {
            if !h.vsan_enabled || h.connection_state != "connected" {
                continue;
            }
            h.vsan_syncing = Some(match &h.vsan_internal_system {
                Some(vis) => self.syncing_vsan_objects(vis).map_err(|e| e.to_string()),
                None => Err("vCenter names no configManager.vsanInternalSystem".into()),
            });
        }
        Ok(hosts)
    }

    /// `HostVsanInternalSystem.QuerySyncingVsanObjects` with no UUIDs (every object): how many
    /// vSAN objects the host reports resyncing. Read-only.
    pub fn syncing_vsan_objects(&self, vis: &MoRef) -> Result<u64, VimError> {
        self.call(
            "QuerySyncingVsanObjects",
            |b| {
                let json = child_text(b, "returnval").unwrap_or_default();
                count_syncing_objects(&json)
            },
            &format!(
                "<QuerySyncingVsanObjects>{}</QuerySyncingVsanObjects>",
                vis.xml("_this")
            ),
        )
    }

    /// `OptionManager.QueryOptions` on vCenter's settings for keys starting with `prefix`
    /// (e.g. `vpxd.certmgmt.`). A prefix with no setting gives an empty list.
    pub fn options(&self, prefix: &str) -> Result<Vec<OptionSetting>, VimError> {
        let om = self.need(&self.content.setting, "QueryOptions", "setting")?;
        let body = format!(
            "<QueryOptions>{}<name>{}</name></QueryOptions>",
            om.xml("_this"),
            escape(prefix)
        );
        match self.call(
            "QueryOptions",
            |b| {
                Ok(b.children()
                    .filter(|c| c.tag_name().name() == "returnval")
                    .map(|r| OptionSetting {
                        key: child_text(r, "key").unwrap_or_default(),
                        value: child_text(r, "value").unwrap_or_default(),
                    })
                    .collect())
            },
            &body,
        ) {
            Err(VimError::Fault { fault, .. }) if fault == "InvalidName" => Ok(Vec::new()),
            r => r,
        }
    }

    fn host_task(&self, method: &str, hosts: &[MoRef]) -> Result<MoRef, VimError> {
        let cm = self.need(
            &self.content.certificate_manager,
            method,
            "certificateManager",
        )?;
        let list: String = hosts.iter().map(|h| h.xml("host")).collect();
        self.call(
            method,
            |b| {
                child(b, "returnval")
                    .and_then(moref_of)
                    .ok_or("no task".into())
            },
            &format!("<{method}>{}{list}</{method}>", cm.xml("_this")),
        )
    }

    /// `CertificateManager.CertMgrRefreshCertificates_Task`: vCenter has VMCA issue new
    /// certificates to `hosts`. Returns the task.
    ///
    /// Idempotent in effect: a repeated refresh only issues yet another certificate; callers
    /// record the certificate they saw before and verify the one served afterwards.
    pub fn refresh_certificates(&self, hosts: &[MoRef]) -> Result<MoRef, VimError> {
        self.host_task("CertMgrRefreshCertificates_Task", hosts)
    }

    /// `CertificateManager.CertMgrRefreshCACertificatesAndCRLs_Task`: pushes vCenter's trusted
    /// roots and CRLs to `hosts`. Idempotent: pushing the same roots again changes nothing.
    pub fn refresh_ca_certificates(&self, hosts: &[MoRef]) -> Result<MoRef, VimError> {
        self.host_task("CertMgrRefreshCACertificatesAndCRLs_Task", hosts)
    }

    /// `HostSystem.DisconnectHost_Task`. Idempotent: disconnecting a disconnected host is a no-op.
    pub fn disconnect_host(&self, host: &MoRef) -> Result<MoRef, VimError> {
        self.call(
            "DisconnectHost_Task",
            |b| {
                child(b, "returnval")
                    .and_then(moref_of)
                    .ok_or("no task".into())
            },
            &format!(
                "<DisconnectHost_Task>{}</DisconnectHost_Task>",
                host.xml("_this")
            ),
        )
    }

    /// `HostSystem.ReconnectHost_Task`. With `ssl_thumbprint` (SHA-1, colon-separated hex, as
    /// vCenter shows it) a `HostConnectSpec` tells vCenter to accept the certificate the host
    /// serves now (the emergency path for an expired host certificate); without, vCenter
    /// re-reads the host with the trust it already has. Idempotent: reconnecting a connected
    /// host re-syncs it.
    pub fn reconnect_host(
        &self,
        host: &MoRef,
        ssl_thumbprint: Option<&str>,
    ) -> Result<MoRef, VimError> {
        // HostConnectSpec field order of the WSDL: hostName, port, sslThumbprint, …, force
        // (the only required field).
        let spec = ssl_thumbprint
            .map(|t| {
                format!(
                    "<cnxSpec><sslThumbprint>{}</sslThumbprint><force>false</force></cnxSpec>",
                    escape(t)
                )
            })
            .unwrap_or_default();
        self.call(
            "ReconnectHost_Task",
            |b| {
                child(b, "returnval")
                    .and_then(moref_of)
                    .ok_or("no task".into())
            },
            &format!(
                "<ReconnectHost_Task>{}{spec}</ReconnectHost_Task>",
                host.xml("_this")
            ),
        )
    }

    /// Polls `info.state` of `task` every `poll` until it succeeds, fails (the task's fault
    /// as [`VimError::Task`]) or `timeout` passes.
    pub fn wait_task(
        &self,
        task: &MoRef,
        method: &str,
        poll: Duration,
        timeout: Duration,
    ) -> Result<(), VimError> {
        let pc = self.need(
            &self.content.property_collector,
            "RetrievePropertiesEx",
            "propertyCollector",
        )?;
        let start = Instant::now();
        loop {
            let body = format!(
                "<RetrievePropertiesEx>{}<specSet><propSet><type>Task</type><pathSet>info</pathSet></propSet>\
<objectSet>{}</objectSet></specSet><options></options></RetrievePropertiesEx>",
                pc.xml("_this"),
                task.xml("obj")
            );
            let (state, fault, message) = self.call(
                "RetrievePropertiesEx",
                |b| {
                    let info = b
                        .descendants()
                        .find(|n| n.tag_name().name() == "val")
                        .ok_or("no task info")?;
                    let state = child_text(info, "state").ok_or("task info without state")?;
                    let err = child(info, "error");
                    let fault = err
                        .and_then(|e| child(e, "fault"))
                        .and_then(xsi_type)
                        .unwrap_or_default();
                    let message = err
                        .and_then(|e| child_text(e, "localizedMessage"))
                        .unwrap_or_default();
                    Ok((state, fault, message))
                },
                &body,
            )?;
            match state.as_str() {
                "success" => return Ok(()),
                "error" => {
                    return Err(VimError::Task {
                        task: task.value.clone(),
                        method: method.into(),
                        fault,
                        message,
                    });
                }
                _ if start.elapsed() >= timeout => {
                    return Err(VimError::TaskTimeout {
                        task: task.value.clone(),
                        method: method.into(),
                        state,
                        waited: start.elapsed(),
                    });
                }
                _ => std::thread::sleep(poll),
            }
        }
    }

    /// Ends the session (`SessionManager.Logout`); errors are only logged.
    pub fn logout(self) {
        if let Some(sm) = &self.content.session_manager
            && let Err(e) =
                self.call_raw("Logout", &format!("<Logout>{}</Logout>", sm.xml("_this")))
        {
            tracing::warn!(error = %e, "vCenter logout failed");
        }
    }
}

/// The number of objects in `QuerySyncingVsanObjects`' answer: a JSON object whose
/// `dom_objects` holds one entry per DOM object resyncing (the layout RVC's
/// `vsan.resync_dashboard` reads; UNVERIFIED against a real host, the WSDL only says "string").
pub fn count_syncing_objects(json: &str) -> Result<u64, String> {
    let v: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| format!("QuerySyncingVsanObjects answer is not JSON: {e}"))?;
    match v.get("dom_objects") {
        Some(serde_json::Value::Object(m)) => Ok(m.len() as u64),
        None | Some(serde_json::Value::Null) if v.is_object() => Ok(0),
        _ => Err(format!(
            "QuerySyncingVsanObjects answer has no dom_objects object: {}",
            json.chars().take(200).collect::<String>()
        )),
    }
}

/// Hosts (cluster field holding the parent's moref value) and cluster names by moref value.
fn parse_hosts(
    b: roxmltree::Node<'_, '_>,
) -> (Vec<HostInfo>, std::collections::BTreeMap<String, String>) {
    let mut hosts = Vec::new();
    let mut clusters = std::collections::BTreeMap::new();
    let Some(rv) = child(b, "returnval") else {
        return (hosts, clusters);
    };
    for obj in rv.children().filter(|c| c.tag_name().name() == "objects") {
        let Some(moref) = child(obj, "obj").and_then(moref_of) else {
            continue;
        };
        let props: Vec<(String, roxmltree::Node<'_, '_>)> = obj
            .children()
            .filter(|c| c.tag_name().name() == "propSet")
            .filter_map(|p| Some((child_text(p, "name")?, child(p, "val")?)))
            .collect();
        let get = |n: &str| props.iter().find(|(k, _)| k == n).map(|(_, v)| *v);
        let text = |n: &str| get(n).and_then(|v| v.text()).unwrap_or("").to_owned();
        match moref.kind.as_str() {
            "ClusterComputeResource" => {
                clusters.insert(moref.value.clone(), text("name"));
            }
            "HostSystem" => hosts.push(HostInfo {
                name: text("name"),
                cluster: text("parent"),
                connection_state: text("runtime.connectionState"),
                in_maintenance_mode: text("runtime.inMaintenanceMode") == "true",
                ha_state: get("runtime.dasHostState")
                    .and_then(|v| child_text(v, "state"))
                    .unwrap_or_default(),
                vsan_enabled: text("config.vsanHostConfig.enabled") == "true",
                vsan_internal_system: get("configManager.vsanInternalSystem").and_then(moref_of),
                vsan_syncing: None,
                certificate: get("config.certificate")
                    .map(decode_byte_array)
                    .unwrap_or_default(),
                moref,
            }),
            _ => {}
        }
    }
    (hosts, clusters)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syncing_objects_are_the_dom_objects_entries() {
        let two = r#"{"dom_objects": {"a": {"uuid": "a"}, "b": {}}, "lsom_objects": {}}"#;
        assert_eq!(count_syncing_objects(two), Ok(2));
        assert_eq!(count_syncing_objects(r#"{"dom_objects": {}}"#), Ok(0));
        assert_eq!(count_syncing_objects("{}"), Ok(0));
        let e = count_syncing_objects("[1]").unwrap_err();
        assert!(e.contains("no dom_objects"), "{e}");
        let e = count_syncing_objects("<html>").unwrap_err();
        assert!(e.contains("not JSON"), "{e}");
    }

    #[test]
    fn byte_arrays_decode_in_both_encodings() {
        let wsdl = r#"<val xmlns="urn:vim25"><byte>45</byte><byte>-1</byte><byte>65</byte></val>"#;
        let doc = roxmltree::Document::parse(wsdl).unwrap();
        assert_eq!(decode_byte_array(doc.root_element()), vec![45, 255, 65]);
        let vcsim = "<val><byte>-----BEGIN CERTIFICATE-----&#xA;MIIB</byte></val>";
        let doc = roxmltree::Document::parse(vcsim).unwrap();
        assert_eq!(
            decode_byte_array(doc.root_element()),
            b"-----BEGIN CERTIFICATE-----\nMIIB".to_vec()
        );
    }

    #[test]
    fn faults_name_their_type() {
        let x = r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>Cannot complete login due to an incorrect user name or password.</faultstring><detail><InvalidLoginFault xmlns="urn:vim25" xsi:type="InvalidLogin"></InvalidLoginFault></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>"#;
        let doc = roxmltree::Document::parse(x).unwrap();
        let (kind, msg) = soap_body(&doc).unwrap_err();
        assert_eq!(kind, "InvalidLogin");
        assert!(msg.contains("incorrect user name"));
    }

    #[test]
    fn chunked_and_sized_bodies_parse_and_truncation_is_an_error() {
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_http(chunked).unwrap().2, b"abcde");
        let sized = b"HTTP/1.1 500 Internal\r\nContent-Length: 3\r\n\r\nxyz";
        assert_eq!(parse_http(sized).unwrap().0, 500);
        assert!(parse_http(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nxyz").is_err());
        assert!(
            parse_http(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nff\r\nab").is_err()
        );
        assert!(parse_http(b"garbage").is_err());
    }

    #[test]
    fn urls_are_checked() {
        assert!(parse_url("ftp://x", true).is_err());
        assert!(parse_url("http://127.0.0.1:1/sdk", false).is_err());
        let (tls, host, port, path) = parse_url("https://vc.lab.local/sdk", false).unwrap();
        assert!(tls && host == "vc.lab.local" && port == 443 && path == "/sdk");
        assert_eq!(parse_url("https://[::1]:8443/sdk", false).unwrap().2, 8443);
    }
}

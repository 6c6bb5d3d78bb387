//! The simulated engine REST API (reference A10): `certfleet-sim --root ENGINE_ROOT
//! ovirt-engine-api --listen 127.0.0.1:PORT`, plain HTTP on loopback with the real paths.
//!
//! - `POST /ovirt-engine/sso/oauth/token` (form `grant_type=password&scope=ovirt-app-api&
//!   username=…&password=…`) → `{"access_token": …, "token_type": "bearer", …}`; a wrong
//!   password or scope gets the SSO's 400 error. Everything under `/ovirt-engine/api` needs
//!   `Authorization: Bearer <token>` (401 otherwise).
//! - `GET /ovirt-engine/api/hosts[?search=…]`, `GET …/hosts/ID`: XML by default, JSON when
//!   `Accept: application/json` (oVirt's two formats; JSON booleans are strings).
//! - `PUT …/hosts/ID` with `<host><power_management><enabled>B</enabled>…` (or the JSON twin).
//! - `POST …/hosts/ID/deactivate|enrollcertificate|activate` with `<action/>`.
//! - `GET …/events?from=ID`: audit events 881 (certificate enrolled) / 882 (enroll failed).
//!
//! Host state machine, advanced by polls (each `GET` that shows a host counts as one poll of
//! it), so clients see what A10 warns about: `deactivate` goes `preparing_for_maintenance` and
//! reaches `maintenance` a few polls later; `enrollcertificate` (only from `maintenance`,
//! `install_failed` or `non_responsive`, else 409 with the engine's message) still reads
//! `maintenance` on the first poll (the race), then `installing`, then enrolls and returns to
//! `maintenance` (event 881); `activate` still reads `maintenance` once, then `unassigned`,
//! `initializing`, `up` — or `non_responsive` if libvirtd/vdsmd are not active on the host.
//!
//! Enrollment does what `ovirt-host-enroll-certificate.yml` does (A9): a new key and `-subj /`
//! CSR on the host (real `openssl req`), the engine's `pki-enroll-request.sh` `openssl ca`
//! line with `VdsCertificateValidityInDays`, the files copied as in A8 (modes and owners of
//! the existing files kept), the vmconsole host certificate re-issued when the host has one
//! (the playbook's vm-console role), `libvirtd` restarted (and vdsmd with it) on the host's
//! simulated systemd.
//!
//! Version-dependent rules (oVirt/ovirt-engine `backend/.../bll/validator/HostValidator.java`
//! `validateStatusForEnrollCertificate` at tags `ovirt-engine-4.5.0` and `ovirt-engine-4.5.1`):
//! `enrollcertificate` accepts a `non_responsive` host only from 4.5.1 on, else it answers
//! `CANNOT_ENROLL_CERTIFICATE_HOST_STATUS_ILLEGAL`. `deactivate` of a `non_responsive` host
//! that still has running VMs is refused with `VDS_CANNOT_MAINTENANCE_VDS_IS_NOT_RESPONDING_WITH_VMS`
//! (`MaintenanceNumberOfVdssCommand.handleNonResponsiveHosts`; text from `AppErrors.properties`).
//! `GET /ovirt-engine/api` reports the version as `product_info.version` (`major`, `minor`,
//! `build`, `revision`, `full_version`, APIM `types/Version.java`); the version is the engine's
//! release unless a test sets another ([`set_product_version`]). Unverified: the exact REST
//! rendering of a multi-line validation message (we keep the newline inside `[...]`) and that
//! 409 is the HTTP status of every validation failure.
//!
//! State lives in `ENGINE_ROOT/.sim/ovirt-api.json`: credentials, tokens, events, and the
//! registered hosts with their roots ([`register_host`]). Faults ([`set_fault`]):
//! `enroll-http` (the enroll POST answers 500, the host stays in maintenance) and
//! `enroll-ansible` (the playbook fails: `install_failed`, event 882).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::engine::{Ca, Engine};
use crate::sim::SimHost;

/// State file name under the engine's `.sim/`.
const STATE: &str = "ovirt-api.json";

/// Serialises state changes between connection threads.
static LOCK: Mutex<()> = Mutex::new(());

/// One host the engine manages.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApiHost {
    /// Engine host id (UUID).
    pub id: String,
    /// Host name in the engine.
    pub name: String,
    /// Address (FQDN).
    pub address: String,
    /// Root of the simulated host.
    pub root: PathBuf,
    /// Cluster name.
    pub cluster: String,
    /// HostStatus (A10 6).
    pub status: String,
    /// Power management enabled.
    pub pm_enabled: bool,
    /// Pending transitions: (polls left, next status or `enroll`).
    #[serde(default)]
    pub pending: Vec<(u32, String)>,
    /// Injected fault.
    #[serde(default)]
    pub fault: Option<String>,
    /// Every status the host went through, for tests.
    #[serde(default)]
    pub history: Vec<String>,
    /// Power-management changes `(enabled)`, in order, for tests.
    #[serde(default)]
    pub pm_history: Vec<bool>,
    /// VMs the engine believes run on the host.
    #[serde(default)]
    pub running_vms: u32,
}

/// The API's state.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ApiState {
    /// `admin@internal`.
    pub user: String,
    /// Its password.
    pub password: String,
    /// Issued tokens.
    pub tokens: Vec<String>,
    /// Audit events `{id, code, host, description}`.
    pub events: Vec<Value>,
    /// Managed hosts.
    pub hosts: Vec<ApiHost>,
    /// Engine release reported as `product_info` (`4.5.5`); empty: the built engine's.
    #[serde(default)]
    pub product_version: String,
}

impl ApiState {
    /// Loads the state of the engine on `engine`.
    pub fn load(engine: &SimHost) -> Result<ApiState> {
        match std::fs::read(engine.state(STATE)) {
            Ok(b) => Ok(serde_json::from_slice(&b)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ApiState {
                user: "admin@internal".into(),
                ..ApiState::default()
            }),
            Err(e) => Err(e.into()),
        }
    }

    fn save(&self, engine: &SimHost) -> Result<()> {
        let p = engine.state(STATE);
        let tmp = p.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(tmp, p)?;
        Ok(())
    }

    /// The host named `name`.
    pub fn host(&self, name: &str) -> Option<&ApiHost> {
        self.hosts.iter().find(|h| h.name == name)
    }
}

fn update<T>(engine: &SimHost, f: impl FnOnce(&mut ApiState) -> Result<T>) -> Result<T> {
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut s = ApiState::load(engine)?;
    let out = f(&mut s)?;
    s.save(engine)?;
    Ok(out)
}

/// Sets the `admin@internal` password.
pub fn set_password(engine: &SimHost, password: &str) -> Result<()> {
    update(engine, |s| {
        s.password = password.to_owned();
        Ok(())
    })
}

/// Registers a host (status `up`, power management on) in `cluster`; returns its id.
pub fn register_host(
    engine: &SimHost,
    name: &str,
    address: &str,
    root: &Path,
    cluster: &str,
) -> Result<String> {
    update(engine, |s| {
        let id = uuid_like(name, s.hosts.len());
        s.hosts.retain(|h| h.name != name);
        s.hosts.push(ApiHost {
            id: id.clone(),
            name: name.to_owned(),
            address: address.to_owned(),
            root: root.to_owned(),
            cluster: cluster.to_owned(),
            status: "up".into(),
            pm_enabled: true,
            pending: Vec::new(),
            fault: None,
            history: vec!["up".into()],
            pm_history: Vec::new(),
            running_vms: 0,
        });
        Ok(id)
    })
}

/// Injects (or clears) a fault on host `name`: `enroll-http` or `enroll-ansible`.
pub fn set_fault(engine: &SimHost, name: &str, fault: Option<&str>) -> Result<()> {
    update(engine, |s| {
        let h = s
            .hosts
            .iter_mut()
            .find(|h| h.name == name)
            .with_context(|| format!("no host {name}"))?;
        h.fault = fault.map(str::to_owned);
        Ok(())
    })
}

/// Makes the API report engine release `version` (`4.5.0`, `4.5.5`, …).
pub fn set_product_version(engine: &SimHost, version: &str) -> Result<()> {
    update(engine, |s| {
        s.product_version = version.to_owned();
        Ok(())
    })
}

/// Puts host `name` into `status` (e.g. `non_responsive` after its VDSM certificate expired)
/// with `running_vms` VMs the engine believes run there.
pub fn set_host_status(engine: &SimHost, name: &str, status: &str, running_vms: u32) -> Result<()> {
    update(engine, |s| {
        let h = s
            .hosts
            .iter_mut()
            .find(|h| h.name == name)
            .with_context(|| format!("no host {name}"))?;
        set_status(h, status);
        h.running_vms = running_vms;
        Ok(())
    })
}

/// The release the API reports: the set one, else the newest of the built engine's line.
fn product_version(engine: &SimHost, st: &ApiState) -> String {
    if !st.product_version.is_empty() {
        return st.product_version.clone();
    }
    match Engine::load(engine).map(|e| e.spec.version) {
        Ok(super::engine::OvirtVersion::V4_4) => "4.4.10.7".into(),
        _ => "4.5.6".into(),
    }
}

/// `(major, minor, build)` of a release string.
fn release(v: &str) -> (u32, u32, u32) {
    let mut it = v.split('.').map(|p| p.parse().unwrap_or(0));
    (
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
    )
}

fn uuid_like(name: &str, n: usize) -> String {
    let h = certfleet_common::pki::sha256_hex(format!("{name}{n}").as_bytes());
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// `certfleet-sim --root ENGINE_ROOT ovirt-engine-api --listen ADDR`: serves until killed.
pub fn run(engine: &SimHost, args: &[String]) -> Result<i32> {
    let addr = match args {
        [flag, addr] if flag == "--listen" => addr.clone(),
        _ => anyhow::bail!(
            "usage: certfleet-sim --root ENGINE_ROOT ovirt-engine-api --listen 127.0.0.1:PORT"
        ),
    };
    let listener = TcpListener::bind(&addr).with_context(|| format!("binding {addr}"))?;
    eprintln!("ovirt-engine-api listening on http://{addr}/ovirt-engine/api");
    for tcp in listener.incoming() {
        let Ok(tcp) = tcp else { continue };
        let engine = engine.clone();
        std::thread::spawn(move || {
            if let Err(e) = serve_one(&engine, tcp) {
                eprintln!("ovirt-engine-api: {e:#}");
            }
        });
    }
    Ok(0)
}

/// A parsed request.
struct Request {
    method: String,
    path: String,
    query: BTreeMap<String, String>,
    headers: BTreeMap<String, String>,
    body: String,
}

fn read_request(tcp: &TcpStream) -> Result<Request> {
    let mut r = BufReader::new(tcp);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().context("empty request")?.to_owned();
    let target = parts.next().context("no request target")?.to_owned();
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    let (path, q) = target.split_once('?').unwrap_or((&target, ""));
    Ok(Request {
        method,
        path: path.to_owned(),
        query: form(q),
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// Parses `a=b&c=d` with percent-decoding.
fn form(s: &str) -> BTreeMap<String, String> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (pct_decode(k), pct_decode(v))
        })
        .collect()
}

fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                Some(v) => {
                    out.push(v);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A response: status, body (already rendered), content type.
struct Response(u16, String, &'static str);

fn serve_one(engine: &SimHost, mut tcp: TcpStream) -> Result<()> {
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let req = read_request(&tcp)?;
    let json_out = req
        .headers
        .get("accept")
        .is_some_and(|a| a.contains("json"));
    let Response(code, body, ctype) = match handle(engine, &req, json_out) {
        Ok(r) => r,
        Err(e) => fault(500, "Operation Failed", &format!("{e:#}"), json_out),
    };
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        409 => "Conflict",
        _ => "Internal Server Error",
    };
    let mut head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if code == 401 {
        head.push_str("WWW-Authenticate: Bearer realm=\"RESTAPI\"\r\n");
    }
    head.push_str("\r\n");
    tcp.write_all(head.as_bytes())?;
    tcp.write_all(body.as_bytes())?;
    Ok(())
}

fn fault(code: u16, reason: &str, detail: &str, json_out: bool) -> Response {
    let v = json!({"reason": reason, "detail": detail});
    render(code, "fault", &v, json_out)
}

fn render(code: u16, tag: &str, v: &Value, json_out: bool) -> Response {
    if json_out {
        Response(code, v.to_string(), "application/json")
    } else {
        let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\n");
        xml(tag, v, &mut s);
        Response(code, s, "application/xml")
    }
}

/// oVirt XML: `href`/`id` become attributes, arrays repeat the singular element.
fn xml(tag: &str, v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            out.push('<');
            out.push_str(tag);
            for a in ["href", "id"] {
                if let Some(Value::String(x)) = m.get(a) {
                    out.push_str(&format!(" {a}=\"{}\"", esc(x)));
                }
            }
            out.push('>');
            for (k, c) in m {
                if k == "href" || k == "id" {
                    continue;
                }
                match c {
                    Value::Array(items) => {
                        for i in items {
                            xml(k, i, out);
                        }
                    }
                    _ => xml(k, c, out),
                }
            }
            out.push_str(&format!("</{tag}>"));
        }
        Value::String(s) => out.push_str(&format!("<{tag}>{}</{tag}>", esc(s))),
        Value::Null => {}
        other => out.push_str(&format!("<{tag}>{other}</{tag}>")),
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn handle(engine: &SimHost, req: &Request, json_out: bool) -> Result<Response> {
    if req.method == "POST" && req.path == "/ovirt-engine/sso/oauth/token" {
        return token(engine, req);
    }
    let Some(rest) = req.path.strip_prefix("/ovirt-engine/api") else {
        return Ok(fault(404, "Not Found", &req.path, json_out));
    };
    let bearer = req
        .headers
        .get("authorization")
        .and_then(|a| a.strip_prefix("Bearer "))
        .map(str::to_owned);
    let st = ApiState::load(engine)?;
    if !bearer.is_some_and(|t| st.tokens.contains(&t)) {
        return Ok(Response(
            401,
            "<html><head><title>Error</title></head><body>Unauthorized</body></html>".into(),
            "text/html",
        ));
    }
    let segs: Vec<&str> = rest.trim_matches('/').split('/').collect();
    match (req.method.as_str(), segs.as_slice()) {
        ("GET", [""]) => {
            let full = product_version(engine, &st);
            let (major, minor, build) = release(&full);
            let revision = full.split('.').nth(3).unwrap_or("0");
            Ok(render(
                200,
                "api",
                &json!({"product_info": {"name": "oVirt Engine", "vendor": "ovirt.org", "version": {
                    "build": build.to_string(), "full_version": format!("{full}-1.el8"),
                    "major": major.to_string(), "minor": minor.to_string(), "revision": revision,
                }}}),
                json_out,
            ))
        }
        ("GET", ["hosts"]) => update(engine, |s| {
            let search = req.query.get("search").cloned().unwrap_or_default();
            let org = organization(engine);
            let mut list = Vec::new();
            for h in s.hosts.iter_mut() {
                if !matches_search(h, &search) {
                    continue;
                }
                poll(h, &mut s.events, engine)?;
                list.push(host_json(h, &org));
            }
            Ok(render(200, "hosts", &json!({"host": list}), json_out))
        }),
        ("GET", ["hosts", id]) => update(engine, |s| {
            let org = organization(engine);
            let Some(h) = s.hosts.iter_mut().find(|h| h.id == *id) else {
                return Ok(fault(404, "Not Found", &format!("host {id}"), json_out));
            };
            poll(h, &mut s.events, engine)?;
            Ok(render(200, "host", &host_json(h, &org), json_out))
        }),
        ("PUT", ["hosts", id]) => update(engine, |s| {
            let org = organization(engine);
            let Some(h) = s.hosts.iter_mut().find(|h| h.id == *id) else {
                return Ok(fault(404, "Not Found", &format!("host {id}"), json_out));
            };
            if let Some(en) = pm_enabled(&req.body) {
                h.pm_enabled = en;
                h.pm_history.push(en);
            }
            Ok(render(200, "host", &host_json(h, &org), json_out))
        }),
        ("POST", ["hosts", id, action]) => update(engine, |s| {
            let version = release(&product_version(engine, s));
            let Some(h) = s.hosts.iter_mut().find(|h| h.id == *id) else {
                return Ok(fault(404, "Not Found", &format!("host {id}"), json_out));
            };
            host_action(h, action, version, json_out)
        }),
        ("GET", ["events"]) => {
            let from: u64 = req
                .query
                .get("from")
                .and_then(|f| f.parse().ok())
                .unwrap_or(0);
            let list: Vec<Value> = st
                .events
                .iter()
                .filter(|e| {
                    e["id"]
                        .as_str()
                        .and_then(|i| i.parse::<u64>().ok())
                        .is_some_and(|i| i > from)
                })
                .cloned()
                .collect();
            Ok(render(200, "events", &json!({"event": list}), json_out))
        }
        _ => Ok(fault(
            404,
            "Not Found",
            &format!("{} {}", req.method, req.path),
            json_out,
        )),
    }
}

fn token(engine: &SimHost, req: &Request) -> Result<Response> {
    let f = form(&req.body);
    let err = |code: &str, msg: &str| {
        Response(
            400,
            json!({"error_code": code, "error": msg}).to_string(),
            "application/json",
        )
    };
    if f.get("grant_type").map(String::as_str) != Some("password") {
        return Ok(err("unsupported_grant_type", "grant_type must be password"));
    }
    if f.get("scope").map(String::as_str) != Some("ovirt-app-api") {
        return Ok(err("invalid_scope", "The scope ovirt-app-api is required."));
    }
    let user = f.get("username").cloned().unwrap_or_default();
    update(engine, |s| {
        if user != s.user || f.get("password") != Some(&s.password) || s.password.is_empty() {
            return Ok(err(
                "access_denied",
                &format!(
                    "Cannot authenticate user '{user}': The username or password is incorrect.."
                ),
            ));
        }
        let mut b = [0u8; 24];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).ok();
        let t = hex::encode(b);
        s.tokens.push(t.clone());
        Ok(Response(
            200,
            json!({"access_token": t, "scope": "ovirt-app-api", "exp": "9223372036854775807", "token_type": "bearer"}).to_string(),
            "application/json",
        ))
    })
}

fn organization(engine: &SimHost) -> String {
    Engine::load(engine)
        .map(|e| e.organization)
        .unwrap_or_default()
}

/// `name=X` / `address=X` searches (the rest lists everything, as a real engine would for an
/// unknown term it cannot match… close enough for clients that filter themselves).
fn matches_search(h: &ApiHost, search: &str) -> bool {
    match search.split_once('=') {
        Some(("name", v)) => h.name == v.trim(),
        Some(("address", v)) => h.address == v.trim(),
        _ => true,
    }
}

fn host_json(h: &ApiHost, org: &str) -> Value {
    json!({
        "href": format!("/ovirt-engine/api/hosts/{}", h.id),
        "id": h.id,
        "name": h.name,
        "address": h.address,
        "status": h.status,
        "cluster": {"name": h.cluster},
        "power_management": {"enabled": h.pm_enabled.to_string()},
        "certificate": {"organization": org, "subject": format!("O={org},CN={}", h.address)},
    })
}

/// `<enabled>B</enabled>` inside `<power_management>` (XML) or the JSON twin.
fn pm_enabled(body: &str) -> Option<bool> {
    if let Ok(v) = serde_json::from_str::<Value>(body) {
        let e = &v["power_management"]["enabled"];
        return e
            .as_bool()
            .or_else(|| e.as_str().and_then(|s| s.parse().ok()));
    }
    let pm = body.split("<power_management>").nth(1)?;
    let e = pm.split("<enabled>").nth(1)?.split("</enabled>").next()?;
    e.trim().parse().ok()
}

fn set_status(h: &mut ApiHost, s: &str) {
    h.status = s.to_owned();
    h.history.push(s.to_owned());
}

fn host_action(
    h: &mut ApiHost,
    action: &str,
    version: (u32, u32, u32),
    json_out: bool,
) -> Result<Response> {
    let ok = || render(200, "action", &json!({"status": "complete"}), json_out);
    let illegal = |what: &str, why: &str| {
        fault(
            409,
            "Operation Failed",
            &format!("[Cannot {what} Host. {why}]"),
            json_out,
        )
    };
    let busy = !h.pending.is_empty();
    match action {
        "deactivate" => {
            if h.status == "non_responsive" && h.running_vms > 0 {
                return Ok(fault(
                    409,
                    "Operation Failed",
                    "[Cannot switch Host to Maintenance mode.\nHost still has running VMs on it and is in Non Responsive state.]",
                    json_out,
                ));
            }
            if busy
                || !matches!(
                    h.status.as_str(),
                    "up" | "non_operational" | "non_responsive" | "error" | "install_failed"
                )
            {
                return Ok(illegal(
                    "switch to Maintenance mode",
                    &format!("Host is in status {}.", h.status),
                ));
            }
            set_status(h, "preparing_for_maintenance");
            h.pending = vec![(3, "maintenance".into())];
            Ok(ok())
        }
        "enrollcertificate" => {
            let allowed = matches!(h.status.as_str(), "maintenance" | "install_failed")
                || (h.status == "non_responsive" && version >= (4, 5, 1));
            if busy || !allowed {
                return Ok(illegal(
                    "enroll certificate",
                    "Please switch Host to Maintenance mode first.",
                ));
            }
            if h.fault.as_deref() == Some("enroll-http") {
                return Ok(fault(
                    500,
                    "Operation Failed",
                    "[Internal Engine Error: enroll certificate command failed to start]",
                    json_out,
                ));
            }
            // The race of A10: the first poll still reads maintenance.
            h.pending = vec![(2, "installing".into()), (2, "enroll".into())];
            Ok(ok())
        }
        "activate" => {
            if busy || !matches!(h.status.as_str(), "maintenance" | "install_failed") {
                return Ok(illegal(
                    "activate",
                    &format!("Host is in status {}.", h.status),
                ));
            }
            h.pending = vec![
                (2, "unassigned".into()),
                (1, "initializing".into()),
                (2, "up".into()),
            ];
            Ok(ok())
        }
        other => Ok(fault(
            404,
            "Not Found",
            &format!("host action {other}"),
            json_out,
        )),
    }
}

/// One poll of `h`: advances its pending transition.
fn poll(h: &mut ApiHost, events: &mut Vec<Value>, engine: &SimHost) -> Result<()> {
    let Some((left, next)) = h.pending.first_mut() else {
        return Ok(());
    };
    *left = left.saturating_sub(1);
    if *left > 0 {
        return Ok(());
    }
    let next = next.clone();
    h.pending.remove(0);
    match next.as_str() {
        "enroll" => {
            let result = if h.fault.as_deref() == Some("enroll-ansible") {
                Err(anyhow::anyhow!(
                    "ovirt-host-enroll-certificate.yml failed (simulated fault)"
                ))
            } else {
                enroll(engine, h)
            };
            let id = events.len() as u64 + 1;
            match result {
                Ok(()) => {
                    set_status(h, "maintenance");
                    events.push(json!({"id": id.to_string(), "code": "881", "host": {"id": h.id},
                        "description": format!("Certificate for host {} was enrolled successfully.", h.name)}));
                }
                Err(e) => {
                    set_status(h, "install_failed");
                    events.push(json!({"id": id.to_string(), "code": "882", "host": {"id": h.id},
                        "description": format!("Failed to enroll certificate for host {}: {e:#}", h.name)}));
                }
            }
        }
        "up" => {
            let host = SimHost::new(&h.root, engine.sim_bin.clone())?;
            let down: Vec<&str> = ["libvirtd", "vdsmd"]
                .into_iter()
                .filter(|u| {
                    crate::sim::systemd::unit(&host, u)
                        .map(|x| x.state != "active")
                        .unwrap_or(true)
                })
                .collect();
            if down.is_empty() {
                set_status(h, "up");
            } else {
                set_status(h, "non_responsive");
            }
        }
        s => set_status(h, s),
    }
    Ok(())
}

/// A9: new key and CSR on the host, engine signs, files copied as in A8, libvirtd restarted.
fn enroll(engine_host: &SimHost, h: &ApiHost) -> Result<()> {
    let engine = Engine::load(engine_host)?;
    let host = SimHost::new(&h.root, engine_host.sim_bin.clone())?;
    let work = host.state("enroll-api");
    std::fs::create_dir_all(&work)?;
    let key = work.join("vdsm.key");
    let csr = work.join("vdsm.csr");
    super::engine::run_openssl(
        &work,
        &[
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/",
            "-keyout",
            &key.display().to_string(),
            "-out",
            &csr.display().to_string(),
        ],
        &[],
    )?;
    let fqdn = &h.address;
    std::fs::copy(&csr, engine.path(&format!("requests/{fqdn}.req")))?;
    let cert = engine.enroll_request(
        fqdn,
        &format!("/O={}/CN={fqdn}", engine.organization),
        Some(&format!("DNS:{fqdn}")),
        None,
        engine.spec.version.host_cert_days(),
        None,
        Ca::Engine,
    )?;
    let cert = std::fs::read(cert)?;
    let key = std::fs::read(&key)?;
    let ca = engine.ca_pem()?;
    let files: [(&str, &[u8]); 9] = [
        ("/etc/pki/vdsm/certs/cacert.pem", ca.as_bytes()),
        (super::node::VDSM_CERT, &cert),
        ("/etc/pki/vdsm/keys/vdsmkey.pem", &key),
        ("/etc/pki/vdsm/libvirt-spice/server-cert.pem", &cert),
        ("/etc/pki/vdsm/libvirt-spice/server-key.pem", &key),
        ("/etc/pki/vdsm/libvirt-vnc/server-cert.pem", &cert),
        ("/etc/pki/vdsm/libvirt-vnc/server-key.pem", &key),
        ("/etc/pki/libvirt/clientcert.pem", &cert),
        ("/etc/pki/libvirt/private/clientkey.pem", &key),
    ];
    for (path, bytes) in files {
        // Ansible `copy`: a temporary file renamed over the old one, with its mode (the
        // recorded owner stays as it was).
        let p = host.path(path);
        let mode = std::fs::metadata(&p)
            .map(|m| {
                use std::os::unix::fs::PermissionsExt;
                m.permissions().mode() & 0o7777
            })
            .unwrap_or(0o644);
        let tmp = p.with_extension("ansible-tmp");
        std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        }
        std::fs::rename(&tmp, &p).with_context(|| format!("replacing {}", p.display()))?;
    }
    // The playbook's vmconsole role (`ovirt-host-deploy-vm-console-certificates`).
    if host
        .path(&format!(
            "{}/host-ssh_host_rsa",
            super::engine::VMCONSOLE_PKI
        ))
        .exists()
    {
        let mut node = super::node::Node {
            host: host.clone(),
            spec: super::node::NodeSpec::new(fqdn),
            owners: BTreeMap::new(),
        };
        super::node::vmconsole_host(
            &mut node,
            &engine,
            &work,
            engine.spec.version.host_cert_days(),
        )?;
    }
    std::fs::remove_dir_all(&work)?;
    for unit in ["libvirtd", "vdsmd"] {
        let code = crate::sim::systemd::run(&host, &["restart".into(), unit.into()])?;
        anyhow::ensure!(code == 0, "restarting {unit} on {} failed", h.name);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The refusals are the engine's own texts (real `AppErrors.properties` lines).
    #[test]
    fn refusals_use_the_engine_s_messages() {
        let real = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/real/ovirt/AppErrors.properties.excerpt"
        ))
        .unwrap();
        let msg = |k: &str| {
            real.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .unwrap()
                .replace("\\n", "\n")
                .replace("${action}", "enroll certificate")
                .replace("${type}", "Host")
        };
        let mut h = ApiHost {
            id: "1".into(),
            name: "kvm01".into(),
            address: "kvm01.example.test".into(),
            root: PathBuf::from("/nonexistent"),
            cluster: "Default".into(),
            status: "non_responsive".into(),
            pm_enabled: true,
            pending: vec![],
            fault: None,
            history: vec![],
            pm_history: vec![],
            running_vms: 1,
        };
        let Response(code, body, _) = host_action(&mut h, "deactivate", (4, 5, 6), true).unwrap();
        assert_eq!(code, 409);
        let detail: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            detail["detail"],
            format!(
                "[{}]",
                msg("VDS_CANNOT_MAINTENANCE_VDS_IS_NOT_RESPONDING_WITH_VMS")
            )
        );
        // Before 4.5.1 a NonResponsive host cannot be enrolled; from 4.5.1 it can.
        let Response(code, body, _) =
            host_action(&mut h, "enrollcertificate", (4, 5, 0), true).unwrap();
        assert_eq!(code, 409);
        let detail: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            detail["detail"],
            format!("[{}]", msg("CANNOT_ENROLL_CERTIFICATE_HOST_STATUS_ILLEGAL"))
        );
        let Response(code, _, _) =
            host_action(&mut h, "enrollcertificate", (4, 5, 1), true).unwrap();
        assert_eq!(code, 200);
    }

    #[test]
    fn forms_decode() {
        let f = form("grant_type=password&username=admin%40internal&password=a+b%21");
        assert_eq!(f["username"], "admin@internal");
        assert_eq!(f["password"], "a b!");
    }

    #[test]
    fn power_management_bodies() {
        assert_eq!(
            pm_enabled(
                "<host><power_management><enabled>false</enabled></power_management></host>"
            ),
            Some(false)
        );
        assert_eq!(
            pm_enabled(r#"{"power_management":{"enabled":"true"}}"#),
            Some(true)
        );
        assert_eq!(pm_enabled("<host/>"), None);
    }

    #[test]
    fn xml_puts_ids_in_attributes() {
        let mut s = String::new();
        xml(
            "hosts",
            &json!({"host": [{"id": "1", "href": "/h/1", "status": "up"}]}),
            &mut s,
        );
        assert_eq!(
            s,
            "<hosts><host href=\"/h/1\" id=\"1\"><status>up</status></host></hosts>"
        );
    }
}

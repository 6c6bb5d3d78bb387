//! The simulated VCSA's mutating tools, as `shared/reference/vsphere.md` describes them:
//! `certool` (§7: `--genkey`, `--gencert` with `--config`/cfg-key flags/`--FQDN`, `--genCIScert`
//! with its VECS side effect and `--dataencipherment`; keys and signatures by the real `openssl`
//! with the VMCA root key, capped at the root's end as VMCA does; `--genselfcacert`, `--rootca`
//! and `--getrootca` from lightwave's vmca/certool and vmca/service sources, see each
//! function), `service-control` (§8.1: `--stop/--start --all|<svc>`, `--status`
//! headings) and a vCenter "login" probe (`certfleet-sim --root R vcsa-login`) that asks the real
//! slapd (vmdir) for the active STS signing certificate and fails, as SSO does, while it is
//! expired or the `sts` service is not running, or while the `vsphere-webclient` or `vpxd`
//! solution-user certificate is expired (503, [DER]). `ldapmodify` is the real binary (linked at
//! `/opt/likewise/bin/ldapmodify`); the machine account may write the tenant subtree.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use base64::Engine;

use super::{EntryType, VcsaState, VecsEntry, VecsStore};
use crate::sim::SimHost;

// === certool ===

/// Exit code and message of a failed certool command [DER: VMCA error codes are not in the
/// reference; the simulator uses Win32 ERROR_INVALID_PARAMETER / ERROR_FILE_NOT_FOUND].
fn certool_fail(code: u32, msg: &str) -> i32 {
    println!("Status : Failed");
    println!("Error Code : {code}");
    println!("Error Message : {msg}");
    (code & 0xff) as i32
}

const CFG_KEYS: [&str; 10] = [
    "Country",
    "Name",
    "DomainComponent",
    "Organization",
    "OrgUnit",
    "State",
    "Locality",
    "IPAddress",
    "Email",
    "Hostname",
];

/// Parses `--opt=value`, `--opt value` and bare flags.
fn parse_certool(args: &[String]) -> Result<(Vec<String>, BTreeMap<String, String>), String> {
    const FLAGS: [&str; 9] = [
        "--genkey",
        "--gencert",
        "--genCIScert",
        "--genselfcacert",
        "--rootca",
        "--getrootca",
        "--dataencipherment",
        "--help",
        "--version",
    ];
    let mut flags = Vec::new();
    let mut opts = BTreeMap::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if FLAGS.contains(&a.as_str()) {
            flags.push(a.trim_start_matches("--").to_owned());
            continue;
        }
        let Some(body) = a.strip_prefix("--") else {
            return Err(format!("unexpected argument {a}"));
        };
        let (k, v) = match body.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (
                body.to_owned(),
                it.next()
                    .cloned()
                    .ok_or(format!("--{body} needs a value"))?,
            ),
        };
        opts.insert(k, v);
    }
    Ok((flags, opts))
}

fn openssl(args: &[&str], stdin: Option<&[u8]>) -> Result<Vec<u8>, String> {
    use std::io::Write;
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("openssl: {e}"))?;
    if let Some(mut i) = child.stdin.take() {
        let data = stdin.unwrap_or_default().to_vec();
        std::thread::spawn(move || {
            let _ = i.write_all(&data);
        });
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "openssl {}: {}",
            args.first().unwrap_or(&""),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(out.stdout)
}

/// A new RSA 2048 key, PEM (`CERTOOL_PRIVATE_KEY_LENGTH`).
fn rsa_key() -> Result<Vec<u8>, String> {
    openssl(
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ],
        None,
    )
}

fn read_cfg(path: &str) -> Result<BTreeMap<String, String>, String> {
    let bytes = std::fs::read(path).map_err(|_| format!("Failed to open file [{path}]"))?;
    if bytes.starts_with(&[0xff, 0xfe]) || bytes.starts_with(&[0xfe, 0xff]) {
        return Err(format!(
            "{path} : certool supports only UTF8 or ASCII encoding for config files"
        ));
    }
    let mut m = BTreeMap::new();
    for line in String::from_utf8_lossy(&bytes).lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            m.insert(k.trim().to_owned(), v.trim().to_owned());
        }
    }
    Ok(m)
}

fn certool(host: &SimHost, mut state: VcsaState, args: &[String]) -> i32 {
    let (flags, opts) = match parse_certool(args) {
        Ok(x) => x,
        Err(e) => return certool_fail(87, &e),
    };
    let has = |f: &str| flags.iter().any(|x| x == f);
    if let Some(server) = opts.get("server")
        && server != "localhost"
        && server != &state.pnid
        && server != "127.0.0.1"
    {
        return certool_fail(
            1_326,
            &format!("cannot reach VMCA on {server}: the simulator has only localhost"),
        );
    }
    if has("genselfcacert") {
        return genselfcacert(&opts);
    }
    if has("rootca") {
        return rootca(host, state, &opts);
    }
    if has("getrootca") {
        return match std::fs::read_to_string(host.path(super::VMCA_ROOT)) {
            Ok(pem) => {
                println!("{}", pem.trim_end());
                println!("Status : Success");
                0
            }
            Err(_) => certool_fail(70_000, "Root CA Certificate is missing"),
        };
    }
    if has("genkey") {
        let (Some(privkey), Some(pubkey)) = (opts.get("privkey"), opts.get("pubkey")) else {
            return certool_fail(87, "--genkey needs --privkey and --pubkey");
        };
        let key = match rsa_key() {
            Ok(k) => k,
            Err(e) => return certool_fail(1, &e),
        };
        if super::write_private(Path::new(privkey), &key).is_err() {
            return certool_fail(2, &format!("Failed to open file [{privkey}]"));
        }
        let public = match openssl(&["pkey", "-pubout"], Some(&key)) {
            Ok(p) => p,
            Err(e) => return certool_fail(1, &e),
        };
        if std::fs::write(pubkey, public).is_err() {
            return certool_fail(2, &format!("Failed to open file [{pubkey}]"));
        }
        println!("Status : Success");
        return 0;
    }
    if !has("gencert") && !has("genCIScert") {
        println!(
            "Usage: certool --genkey|--gencert|--genCIScert|--genselfcacert|--rootca|--getrootca \
             ... (only these are simulated)"
        );
        return certool_fail(87, "unsupported command");
    }
    let (Some(cert_out), Some(privkey)) = (opts.get("cert"), opts.get("privkey")) else {
        return certool_fail(87, "--gencert needs --cert and --privkey");
    };
    let config = opts
        .get("config")
        .cloned()
        .unwrap_or_else(|| "certool.cfg".into());
    let mut cfg = BTreeMap::new();
    if config != "/dev/null" || Path::new(&config).exists() {
        println!("Using config file : {config}");
        match read_cfg(&config) {
            Ok(c) => cfg = c,
            Err(e) => return certool_fail(2, &e),
        }
    }
    for k in CFG_KEYS {
        if let Some(v) = opts.get(k) {
            cfg.insert(k.to_owned(), v.clone());
        }
    }
    let cis = has("genCIScert");
    if let Some(f) = opts.get("FQDN") {
        cfg.insert("Hostname".into(), f.clone());
    }
    let country = cfg.get("Country").cloned().unwrap_or_default();
    if country.len() != 2 {
        return certool_fail(87, "Country is needed and has to be 2 characters");
    }
    let Some(name) = cfg.get("Name").cloned() else {
        return certool_fail(87, "Name is required");
    };
    let dcs: Vec<&str> = if cis {
        state.domain.split('.').collect()
    } else {
        cfg.get("DomainComponent")
            .map(String::as_str)
            .into_iter()
            .collect()
    };
    let subject = openssl_subject(&name, &dcs, &cfg);
    let mut sans = Vec::new();
    if let Some(h) = cfg.get("Hostname") {
        sans.extend(
            h.split(',')
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .map(|x| format!("DNS:{x}")),
        );
    }
    if let Some(ip) = cfg.get("IPAddress").filter(|v| !v.is_empty()) {
        sans.push(format!("IP:{ip}"));
    }
    if let Some(e) = cfg.get("Email").filter(|v| !v.is_empty()) {
        sans.push(format!("email:{e}"));
    }
    let mut usage = "digitalSignature,keyEncipherment,keyAgreement".to_owned();
    if has("dataencipherment") {
        usage.push_str(",dataEncipherment");
    }
    let mut ext = format!(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,{usage}\nsubjectKeyIdentifier=hash\n\
         authorityKeyIdentifier=keyid\nauthorityInfoAccess=caIssuers;URI:https://{}/afd/vecs/ca\n",
        state.pnid
    );
    if !sans.is_empty() {
        ext.push_str(&format!("subjectAltName={}\n", sans.join(",")));
    }
    let work = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => return certool_fail(1, &e.to_string()),
    };
    let csr = work.path().join("req.csr");
    let extfile = work.path().join("ext.cnf");
    if std::fs::write(&extfile, ext).is_err() {
        return certool_fail(1, "cannot write extension file");
    }
    let key_pem = match std::fs::read_to_string(privkey) {
        Ok(k) => k,
        Err(_) => return certool_fail(2, &format!("Failed to open file [{privkey}]")),
    };
    let root = host.path(super::VMCA_ROOT).display().to_string();
    let ca_key = host.path(super::VMCA_KEY).display().to_string();
    let serial = format!("0x1{}", hex::encode(super::random_bytes::<15>()));
    // VMCA caps a certificate at its root's end ("If the request is beyond CA cert validity
    // use CA cert validity", `VMCASignedRequestPrivate` in lightwave vmca/service/utils.c), and
    // signs even when that end has passed: an expired root gives certificates born expired.
    // [DER] the simulator caps to whole days (`openssl x509 -days`, negative when past).
    let days = match root_not_after(host) {
        Some(end) => {
            let left = end - time::OffsetDateTime::now_utc().unix_timestamp();
            left.div_euclid(86_400).min(730)
        }
        None => 730,
    }
    .to_string();
    let signed = openssl(
        &[
            "req",
            "-new",
            "-key",
            privkey,
            "-subj",
            &subject,
            "-out",
            &csr.display().to_string(),
        ],
        None,
    )
    .and_then(|_| {
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                &csr.display().to_string(),
                "-CA",
                &root,
                "-CAkey",
                &ca_key,
                "-set_serial",
                &serial,
                "-days",
                &days,
                "-sha256",
                "-extfile",
                &extfile.display().to_string(),
            ],
            None,
        )
    });
    let cert = match signed {
        Ok(c) => String::from_utf8_lossy(&c).into_owned(),
        Err(e) => return certool_fail(1, &e),
    };
    if std::fs::write(cert_out, &cert).is_err() {
        return certool_fail(2, &format!("Failed to open file [{cert_out}]"));
    }
    state.vmca_issued.push(serial.clone());
    if state.save(host).is_err() {
        return certool_fail(1, "cannot record the issued certificate");
    }
    if cis {
        // §7: --genCIScert also adds the new cert and key to the VECS store named --Name.
        if state.store(&name).is_none() {
            state.stores.push(VecsStore {
                name: name.clone(),
                entries: Vec::new(),
            });
        }
        let st = state.store_mut(&name).expect("just created");
        if st.entries.iter().any(|e| e.alias == name) {
            println!("Warning : 183, Adding cert to VECS Store Failed.");
        } else {
            st.entries.push(VecsEntry {
                alias: name.clone(),
                entry_type: EntryType::PrivateKey,
                cert: Some(cert.trim_end().to_owned()),
                key: Some(key_pem.trim_end().to_owned()),
            });
            if state.save(host).is_err() {
                println!("Warning : 5, Adding cert to VECS Store Failed.");
            }
        }
    }
    println!("Status : Success");
    0
}

/// `-subj` for openssl from certool's config keys (CN, DC…, C, ST, L, O, OU).
fn openssl_subject(name: &str, dcs: &[&str], cfg: &BTreeMap<String, String>) -> String {
    let esc = |v: &str| v.replace('/', "\\/");
    let mut subject = format!("/CN={}", esc(name));
    for dc in dcs
        .iter()
        .flat_map(|d| d.split('.'))
        .filter(|d| !d.is_empty())
    {
        subject.push_str(&format!("/DC={}", esc(dc)));
    }
    for (k, short) in [
        ("Country", "C"),
        ("State", "ST"),
        ("Locality", "L"),
        ("Organization", "O"),
        ("OrgUnit", "OU"),
    ] {
        if let Some(v) = cfg.get(k).filter(|v| !v.is_empty()) {
            subject.push_str(&format!("/{short}={}", esc(v)));
        }
    }
    subject
}

/// `notAfter` (Unix seconds) of the VMCA root the host holds now.
fn root_not_after(host: &SimHost) -> Option<i64> {
    let pem = std::fs::read(host.path(super::VMCA_ROOT)).ok()?;
    let der = certfleet_common::pem::first_certificate(&pem).ok()?;
    Some(certfleet_common::x509::parse_der(&der).ok()?.not_after)
}

/// `VMCA_ARGUMENT_ERROR` (vmca_error.h: 70000 + 3).
const VMCA_ARGUMENT_ERROR: u32 = 70_003;

/// `certool --genselfcacert --outprivkey K --outcert C --config F` (lightwave
/// vmca/certool/Handler.cpp `HandleGenSelfCert`): a new RSA 2048 key and a self-signed CA
/// certificate from the config file's values (CN from `Name`, `DomainComponent`, O, OU, ST, C,
/// `Hostname`, `Email`, `IPAddress` as alternative names), key usage certificate and CRL
/// signing, path length 0 (as the real root in fixtures/real/vsphere/), valid from now for
/// `VMCA_DEFAULT_CA_CERT_VALIDITY` (10 years, certool.h). Local only: VMCA is not asked. The
/// three options are required, with the messages of certool.cpp. [DER] the order of the
/// subject's attributes; [UNV] whether a `Hostname` lands in the SAN of a root as it does in a
/// leaf.
fn genselfcacert(opts: &BTreeMap<String, String>) -> i32 {
    for (opt, what) in [
        ("outprivkey", "No private key file specified."),
        ("outcert", "No certficate file specified."),
        ("config", "No configuration file specified."),
    ] {
        if !opts.contains_key(opt) {
            println!("Error : {what}");
            println!(
                "Example : certool --genselfcacert --outprivkey=<filename> --outcert=<filename>"
            );
            return certool_fail(VMCA_ARGUMENT_ERROR, "Invalid arguments found");
        }
    }
    let config = &opts["config"];
    println!("Using config file : {config}");
    let mut cfg = match read_cfg(config) {
        Ok(c) => c,
        Err(e) => {
            print!("Unable to read the config file");
            return certool_fail(VMCA_ARGUMENT_ERROR, &e);
        }
    };
    for k in CFG_KEYS {
        if let Some(v) = opts.get(k) {
            cfg.insert(k.to_owned(), v.clone());
        }
    }
    let name = cfg.get("Name").cloned().unwrap_or_else(|| "CA".into());
    let dcs: Vec<&str> = cfg
        .get("DomainComponent")
        .map(String::as_str)
        .into_iter()
        .collect();
    let subject = openssl_subject(&name, &dcs, &cfg);
    let key = match rsa_key() {
        Ok(k) => k,
        Err(e) => return certool_fail(1, &e),
    };
    let work = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => return certool_fail(1, &e.to_string()),
    };
    let key_file = work.path().join("ca.key");
    if super::write_private(&key_file, &key).is_err() {
        return certool_fail(1, "cannot write the key");
    }
    let mut args = vec![
        "req".to_owned(),
        "-x509".into(),
        "-new".into(),
        "-key".into(),
        key_file.display().to_string(),
        "-subj".into(),
        subject,
        "-days".into(),
        "3650".into(),
        "-sha256".into(),
        "-set_serial".into(),
        format!("0x1{}", hex::encode(super::random_bytes::<15>())),
        "-addext".into(),
        "basicConstraints=critical,CA:TRUE,pathlen:0".into(),
        "-addext".into(),
        "keyUsage=critical,keyCertSign,cRLSign".into(),
        "-addext".into(),
        "subjectKeyIdentifier=hash".into(),
    ];
    // As the real root in fixtures/real/vsphere/vmca-root_photon-machine_metasploit.pem: the
    // config's e-mail and IP address (and host name) as subject alternative names, pathlen 0.
    let mut sans = Vec::new();
    for (k, kind) in [("Hostname", "DNS"), ("Email", "email"), ("IPAddress", "IP")] {
        if let Some(v) = cfg.get(k).filter(|v| !v.is_empty()) {
            sans.push(format!("{kind}:{v}"));
        }
    }
    if !sans.is_empty() {
        args.push("-addext".into());
        args.push(format!("subjectAltName={}", sans.join(",")));
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let cert = match openssl(&argv, None) {
        Ok(c) => c,
        Err(e) => return certool_fail(1, &e),
    };
    let (out_cert, out_key) = (&opts["outcert"], &opts["outprivkey"]);
    if std::fs::write(out_cert, &cert).is_err() {
        return certool_fail(2, &format!("Failed to open file [{out_cert}]"));
    }
    if super::write_private(Path::new(out_key), &key).is_err() {
        return certool_fail(2, &format!("Failed to open file [{out_key}]"));
    }
    println!("Status : Success");
    0
}

/// `certool --rootca --cert C --privkey K [--server S]` (Handler.cpp `HandleRootCACertificate`,
/// vmca/service/entrypoints.c `VMCAAddRootCertificate`): VMCA checks that the certificate is a
/// CA (`VMCA_NOT_CA_CERT`, 70011 "Not a CA Cert") and that the key is its key
/// (`VMCA_CERT_PRIVATE_KEY_MISMATCH`, 70037 "Cert/Key pair does not match"), keeps the old
/// files (`VMCABackupRootCAFiles`: `root.cer.0` … `.32`, rotated, the same for the key), writes
/// the new root and key, and publishes the root to vmdir (`VMCASrvNotifyDirSync`). From then
/// on VMCA signs with it. [UNV] whether certool asks for `--force` over an existing root
/// (`VMCA_ROOT_CA_ALREADY_EXISTS`'s text says so; certificate-manager option 8 replaces it,
/// so the simulator overwrites).
fn rootca(host: &SimHost, mut state: VcsaState, opts: &BTreeMap<String, String>) -> i32 {
    let (Some(cert), Some(privkey)) = (opts.get("cert"), opts.get("privkey")) else {
        println!("To upload a Root CA Cert, we need both Cert and Private Key.\n");
        println!("Example: certool --rootca --cert=root.cert --privkey=privatekey.pem\n");
        return certool_fail(VMCA_ARGUMENT_ERROR, "Invalid arguments found");
    };
    let (Ok(pem), Ok(key)) = (std::fs::read_to_string(cert), std::fs::read(privkey)) else {
        return certool_fail(2, &format!("Failed to open file [{cert}] or [{privkey}]"));
    };
    let der = match certfleet_common::pem::first_certificate(pem.as_bytes()) {
        Ok(d) => d,
        Err(e) => return certool_fail(70_004, &format!("Invalid certificate: {e}")),
    };
    match certfleet_common::x509::parse_der(&der) {
        Ok(rec) if rec.is_ca => {}
        _ => return certool_fail(70_011, "Not a CA Cert"),
    }
    let cert_pub = openssl(&["x509", "-noout", "-pubkey"], Some(pem.as_bytes()));
    let key_pub = openssl(&["pkey", "-pubout"], Some(&key));
    match (cert_pub, key_pub) {
        (Ok(a), Ok(b)) if a == b => {}
        _ => return certool_fail(70_037, "Cert/Key pair does not match"),
    }
    for base in [super::VMCA_ROOT, super::VMCA_KEY] {
        let path = host.path(base);
        let numbered = |n: u32| std::path::PathBuf::from(format!("{}.{n}", path.display()));
        for n in (1..=32).rev() {
            let _ = std::fs::remove_file(numbered(n));
            let _ = std::fs::copy(numbered(n - 1), numbered(n));
        }
        if path.exists() && std::fs::copy(&path, numbered(0)).is_err() {
            return certool_fail(5, &format!("cannot back up {}", path.display()));
        }
    }
    if host
        .write(super::VMCA_ROOT, format!("{}\n", pem.trim_end()), 0o644)
        .is_err()
        || super::write_private(&host.path(super::VMCA_KEY), &key).is_err()
    {
        return certool_fail(5, "cannot write the root CA files");
    }
    let pem = pem.trim_end().to_owned();
    if !state.vmdir_cas.contains(&pem) {
        state.vmdir_cas.push(pem);
    }
    if state.save(host).is_err() {
        return certool_fail(1, "cannot publish the root to vmdir");
    }
    println!("Status : Success");
    0
}

// === service-control ===
//
// Source: the real captures in fixtures/real/vsphere/ (service-control-status_6.7_vcenter-dc1.txt,
// service-control-start-all-RC5_and_status-all_startpending.txt,
// service-control-status_after-restart_photon-machine.txt, service-control_psc6.5_...): progress
// lines, `StartPending:`/`Stopped:`/`Running:` headings each followed by one line of names,
// manual-start services staying `Stopped:` after `--start --all`, the transient RC=5 failure of
// `--start --all` while services are still starting. Unverified ([UNV]): the exit status of a
// failed `--start --all` (1 here), whether its error line goes to stdout or stderr (stderr here),
// what `--start --all` leaves down under the `HACore` default profile without
// `--vmon-profile HAActive` (everything but the core services here), and how many status polls
// a StartPending lasts (`pending_polls`).

const CORE: [&str; 4] = ["lwsmd", "vmafdd", "vmdird", "vmcad"];

/// Services `--start --all` leaves starting when it fails with RC=5 (the real capture's).
const SLOW_STARTERS: [&str; 5] = [
    "eam",
    "vsphere-ui",
    "vpxd-svcs",
    "content-library",
    "perfcharts",
];

fn service_control(host: &SimHost, mut s: VcsaState, args: &[String]) -> i32 {
    let mut words: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut profile = None;
    if let Some(i) = words.iter().position(|w| *w == "--vmon-profile") {
        profile = words.get(i + 1).copied();
        if profile.is_none() {
            eprintln!("Service-control failed. Error: --vmon-profile needs a value");
            return 1;
        }
        words.drain(i..i + 2);
    }
    let banner = || println!("Operation not cancellable. Please wait for it to finish...");
    match words.as_slice() {
        ["--stop", "--all"] => {
            banner();
            println!("Performing stop operation on profile: ALL...");
            for x in &mut s.services {
                x.run_state = "STOPPED".into();
            }
            s.pending_polls = 0;
            // rhttpproxy is down: nothing keeps the old certificate in memory any more.
            s.https_pinned = None;
            if s.save(host).is_err() {
                return 1;
            }
            println!("Successfully stopped profile: ALL.");
            for c in CORE.iter().rev() {
                println!("Performing stop operation on service {c}...");
                systemd_unit(host, "stop", c);
                println!("Successfully stopped service {c}");
            }
            0
        }
        ["--start", "--all"] => {
            banner();
            for c in CORE {
                println!("Performing start operation on service {c}...");
                // vmafdd/vmdird are systemd units (vCert checks them with systemctl); a broken
                // one stays failed [UNV: what service-control prints then].
                systemd_unit(host, "start", c);
                println!("Successfully started service {c}");
            }
            let profile_name = profile.unwrap_or("ALL");
            println!("Performing start operation on profile: {profile_name}...");
            let hacore = std::fs::read_to_string(host.path(super::DEFAULT_START_PROFILE))
                .is_ok_and(|p| p.trim() == "HACore");
            if hacore && profile != Some("HAActive") {
                // vCenter HA node: the default profile starts the HA core only [UNV].
                s.https_pinned = None;
                if s.save(host).is_err() {
                    return 1;
                }
                println!("Successfully started profile: {profile_name}.");
                return 0;
            }
            let transient = s.start_all_rc5 > 0;
            for x in &mut s.services {
                if x.start_type != "AUTOMATIC" {
                    continue;
                }
                x.run_state = if transient && SLOW_STARTERS.contains(&x.name.as_str()) {
                    "STARTING"
                } else {
                    "STARTED"
                }
                .into();
            }
            s.https_pinned = None;
            if transient {
                s.start_all_rc5 -= 1;
                s.pending_polls = s.pending_polls.max(2);
            }
            if s.save(host).is_err() {
                return 1;
            }
            if transient {
                eprintln!(
                    "Service-control failed. Error: Failed to start services in profile {profile_name}. RC=5, stderr=Failed to start eam, vsphere-ui, vpxd-svcs services. Error: Operation not allowed in current service state"
                );
                return 1;
            }
            println!("Successfully started profile: {profile_name}.");
            0
        }
        [op @ ("--stop" | "--start"), name] => {
            let Some(x) = s
                .services
                .iter_mut()
                .find(|x| x.name == *name || service_name(&x.name) == *name)
            else {
                if CORE.contains(name) {
                    banner();
                    let verb = if *op == "--stop" { "stop" } else { "start" };
                    println!("Performing {verb} operation on service {name}...");
                    println!("Successfully {verb}ed service {name}");
                    return 0;
                }
                // [DER]
                eprintln!("Service-control failed. Error: Service {name} not found");
                return 1;
            };
            let (verb, done, st) = if *op == "--stop" {
                ("stop", "stopped", "STOPPED")
            } else {
                ("start", "started", "STARTED")
            };
            x.run_state = st.into();
            if x.name == "rhttpproxy" || x.name == "envoy" {
                s.https_pinned = None;
            }
            if s.save(host).is_err() {
                return 1;
            }
            banner();
            println!("Performing {verb} operation on service {name}...");
            println!("Successfully {done} service {name}");
            0
        }
        ["--status"] | ["--status", "--all"] => {
            // Services still starting come up after a few polls (the capture's author: "everything
            // came up by itself").
            if s.pending_polls > 0 {
                s.pending_polls -= 1;
                if s.pending_polls == 0 {
                    for x in &mut s.services {
                        if x.run_state == "STARTING" {
                            x.run_state = "STARTED".into();
                        }
                    }
                }
                if s.save(host).is_err() {
                    return 1;
                }
            }
            let pick = |st: &str| -> Vec<String> {
                let mut v: Vec<String> = s
                    .services
                    .iter()
                    .filter(|x| x.run_state == st)
                    .map(|x| service_name(&x.name))
                    .collect();
                v.sort();
                v
            };
            let mut running: Vec<String> = CORE.iter().map(|c| c.to_string()).collect();
            running.extend(pick("STARTED"));
            running.sort();
            for (heading, names) in [
                ("StartPending:", pick("STARTING")),
                ("Stopped:", pick("STOPPED")),
                ("Running:", running),
            ] {
                if !names.is_empty() {
                    println!("{heading}");
                    println!("{}", names.join(" "));
                }
            }
            0
        }
        ["--status", name] => match s
            .services
            .iter()
            .find(|x| x.name == *name || service_name(&x.name) == *name)
        {
            Some(x) => {
                let h = match x.run_state.as_str() {
                    "STARTED" => "Running:",
                    "STARTING" => "StartPending:",
                    _ => "Stopped:",
                };
                println!("{h}\n{}", service_name(&x.name));
                0
            }
            None if CORE.contains(name) => {
                println!("Running:\n{name}");
                0
            }
            None => {
                eprintln!("Service-control failed. Error: Service {name} not found");
                1
            }
        },
        _ => {
            // [DER]
            eprintln!(
                "usage: service-control [--start|--stop|--status] [--all|<service>] [--vmon-profile <profile>] (only these are simulated)"
            );
            1
        }
    }
}

/// Starts/stops `unit` in the simulated systemd when the appliance defines it (vmafdd, vmdird).
fn systemd_unit(host: &SimHost, op: &str, unit: &str) {
    if crate::sim::systemd::unit(host, unit).is_ok() {
        let _ = crate::sim::systemd::run(host, &[op.to_owned(), unit.to_owned()]);
    }
}

/// vmon name → the name service-control prints (`vmware-vpxd`, `vsphere-ui`, `vmcam`, …).
fn service_name(vmon: &str) -> String {
    // Auto Deploy: vmon `rbd` (vCert `vmon-cli -s rbd`), `vmware-rbd-watchdog` in
    // service-control (vCert `service-control --stop vmware-rbd-watchdog`; real --status capture).
    if vmon == "rbd" {
        return "vmware-rbd-watchdog".into();
    }
    if vmon.starts_with("vmware-")
        || vmon.starts_with("vsphere-")
        || ["applmgmt", "vmcam", "vsan-dps"].contains(&vmon)
    {
        vmon.to_owned()
    } else {
        format!("vmware-{vmon}")
    }
}

// === vCenter login ===

/// The active STS signing certificate as vmdir holds it right now (highest `TenantCredential-N`,
/// its non-CA certificate), read from the running slapd with the real `ldapsearch`.
pub fn active_sts_signing(s: &VcsaState) -> anyhow::Result<certfleet_common::model::CertRecord> {
    let base = format!(
        "cn={},cn=Tenants,cn=IdentityManager,cn=Services,{}",
        s.domain,
        s.domain_dn()
    );
    let out = Command::new("/usr/bin/ldapsearch")
        .args(["-LLL", "-o", "ldif-wrap=no", "-x", "-H"])
        .arg(format!("ldap://127.0.0.1:{}", s.ldap_port))
        .args([
            "-D",
            &s.machine_account_dn,
            "-w",
            &s.machine_account_password,
        ])
        .args([
            "-b",
            &base,
            "(objectclass=vmwSTSTenantCredential)",
            "userCertificate",
        ])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "vmdir (ldap://127.0.0.1:{}) did not answer: {}",
        s.ldap_port,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut best: Option<(u32, certfleet_common::model::CertRecord)> = None;
    let mut n = 0u32;
    for line in text.lines() {
        if let Some(dn) = line.strip_prefix("dn: cn=TenantCredential-") {
            n = dn
                .split(',')
                .next()
                .and_then(|x| x.parse().ok())
                .unwrap_or(0);
        } else if let Some(b) = line.strip_prefix("userCertificate:: ") {
            let der = base64::engine::general_purpose::STANDARD.decode(b.trim())?;
            let rec = certfleet_common::x509::parse_der(&der)
                .map_err(|e| anyhow::anyhow!("STS certificate in vmdir: {e}"))?;
            if !rec.is_ca && best.as_ref().is_none_or(|(m, _)| n >= *m) {
                best = Some((n, rec));
            }
        }
    }
    best.map(|(_, r)| r)
        .ok_or_else(|| anyhow::anyhow!("vmdir holds no STS signing certificate"))
}

/// Solution users a vSphere Client login goes through: vsphere-ui presents `vsphere-webclient`
/// and vpxd presents `vpxd` to the STS for their own tokens. With either expired the login gets
/// `503 Service Unavailable` (reference vsphere.md §4.2, KB 344201: "Services cannot get SAML
/// tokens"). [DER: which solution users a login needs is inferred from the store usage; the
/// exact text a real vCenter shows is not captured.]
const LOGIN_SOLUTION_USERS: [&str; 2] = ["vsphere-webclient", "vpxd"];

/// Every reason the login is refused, in the order the request meets them: the STS service, the
/// STS signing certificate in vmdir, then the solution users in VECS.
fn login_refusals(s: &VcsaState) -> (Vec<String>, Option<certfleet_common::model::CertRecord>) {
    let mut why = Vec::new();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if s.services
        .iter()
        .any(|x| x.name == "sts" && x.run_state != "STARTED")
    {
        why.push("the STS service (vmware-stsd) is not running".to_owned());
    }
    let sts = match active_sts_signing(s) {
        Ok(rec) if rec.not_after <= now => {
            why.push(format!(
                "An error occurred while trying to sign the token: the STS signing certificate \
                 {} expired at {}",
                rec.subject, rec.not_after
            ));
            None
        }
        Ok(rec) => Some(rec),
        Err(e) => {
            why.push(format!("{e:#}"));
            None
        }
    };
    for user in LOGIN_SOLUTION_USERS {
        let Some(pem) = s.entry(user, user).and_then(|e| e.cert.clone()) else {
            continue;
        };
        let rec = certfleet_common::pem::first_certificate(pem.as_bytes())
            .ok()
            .and_then(|der| certfleet_common::x509::parse_der(&der).ok());
        if let Some(rec) = rec
            && rec.not_after <= now
        {
            why.push(format!(
                "[503] Service Unavailable: the {user} solution user certificate {} expired at \
                 {} (its service cannot get a SAML token)",
                rec.subject, rec.not_after
            ));
        }
    }
    (why, sts)
}

fn login(s: &VcsaState) -> i32 {
    let user = format!("administrator@{}", s.domain);
    match login_refusals(s) {
        (why, Some(rec)) if why.is_empty() => {
            println!(
                "Login succeeded: {user} (SAML token signed by {}, valid until {})",
                rec.subject, rec.not_after
            );
            0
        }
        (why, _) => {
            for w in why {
                eprintln!("Login failed for {user}: {w}");
            }
            1
        }
    }
}

/// Runs a mutating tool; `None` if `tool` is not one of them.
pub fn run(host: &SimHost, state: VcsaState, tool: &str, args: &[String]) -> Option<i32> {
    Some(match tool {
        "certool" => certool(host, state, args),
        "service-control" => service_control(host, state, args),
        "vcsa-login" => login(&state),
        _ => return None,
    })
}

//! The simulated VCSA command-line tools, each matching `shared/reference/vsphere.md`:
//! `vecs-cli` (§2: usage text verbatim, §2.2 messages and `error & 0xFF` exit codes, §2.3
//! `entry list` layout with real OpenSSL `--text` dumps), `vmafd-cli` (§1, §8.3: bare value and
//! newline), `vdcrepadmin` (§8.6 format strings), `vmon-cli` (§8.2 key/value block) and
//! `lwregshell` (§1 machine-account lookup). Where the reference gives no text (marked [DER] in
//! comments below) the simulator picks a plausible one and keeps it on stderr with a non-zero
//! exit, which is all a careful client may rely on.

// The format strings are kept exactly as in the C source (`\n` and all), so they can be
// compared with the reference side by side.
#![allow(clippy::print_with_newline, clippy::write_with_newline)]

use std::io::{BufRead, Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Result;

use super::{EntryType, Fault, VcsaState, VecsEntry, VecsStore};
use crate::sim::SimHost;

/// `vecs-cli` usage, verbatim from the Lightwave source (§2.1): TAB-indented, trailing spaces.
pub const VECS_USAGE: &str = include_str!("vecs-cli-usage.txt");

/// Runs a simulated tool.
pub fn run(host: &SimHost, tool: &str, args: &[String]) -> Result<i32> {
    let state = VcsaState::load(host)?;
    if let Some(f) = state.faults.get(tool) {
        return Ok(fault(*f));
    }
    if let Some(code) = super::mutate::run(host, state.clone(), tool, args) {
        return Ok(code);
    }
    match tool {
        "vecs-cli" => Ok(vecs_cli(host, state, args)),
        "vmafd-cli" => Ok(vmafd_cli(&state, args)),
        "vdcrepadmin" => Ok(vdcrepadmin(&state, args)),
        "vmon-cli" => Ok(vmon_cli(&state, args)),
        "lwregshell" => Ok(lwregshell(&state, args)),
        "dir-cli" => Ok(super::dircli::run(host, &state, args)),
        "lstool.py" => Ok(super::lstool::run(&state, args)),
        "vcsa-https" => super::https::run(host, args),
        "vcsa-services" => super::cli_services(host),
        other => anyhow::bail!("{other} is not simulated on the VCSA yet"),
    }
}

fn fault(f: Fault) -> i32 {
    let mut out = std::io::stdout();
    match f {
        Fault::Hang => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
        Fault::Garbage => {
            let _ = out.write_all(
                "§§ ~~~ ¿qué? 0x7f\tpartner=???\n<<<<<< HEAD\n%%%% 42 %%%%\n".as_bytes(),
            );
            0
        }
        Fault::Binary => {
            let _ = out.write_all(&[0xff, 0xfe, 0x00, 0x9c, b'\n', 0xc3, 0x28]);
            0
        }
    }
}

// === vecs-cli ===

const ERROR_FILE_NOT_FOUND: u32 = 2;
const ERROR_ACCESS_DENIED: u32 = 5;
const ERROR_INVALID_PARAMETER: u32 = 87;
const ERROR_ALREADY_EXISTS: u32 = 183;
const ERROR_OBJECT_NOT_FOUND: u32 = 4312;

/// `PrintError` (§2.2): the generic failure line on stderr; returns the exit status.
fn vecs_fail(code: u32) -> i32 {
    let name = match code {
        ERROR_FILE_NOT_FOUND => Some("ERROR_FILE_NOT_FOUND"),
        ERROR_ACCESS_DENIED => Some("ERROR_ACCESS_DENIED"),
        ERROR_INVALID_PARAMETER => Some("ERROR_INVALID_PARAMETER"),
        ERROR_ALREADY_EXISTS => Some("ERROR_ALREADY_EXISTS"),
        ERROR_OBJECT_NOT_FOUND => Some("ERROR_OBJECT_NOT_FOUND"),
        _ => None,
    };
    match (code, name) {
        // OpenLDAP's ldap_err2string(5) is "Compare False", so the message becomes multi-line.
        (ERROR_ACCESS_DENIED, Some(n)) => eprint!(
            "vecs-cli failed. Error {code}: Possible errors: \nLDAP error: Compare False \nWin Error: Operation failed with error {n} ({code}) \n"
        ),
        (_, Some(n)) => {
            eprint!("vecs-cli failed. Error {code}: Operation failed with error {n} ({code}) \n")
        }
        (_, None) => eprint!("vecs-cli failed with error {code}\n"),
    }
    (code & 0xff) as i32
}

fn usage_fail() -> i32 {
    print!("{VECS_USAGE}");
    vecs_fail(ERROR_INVALID_PARAMETER)
}

#[derive(Default)]
struct VecsArgs {
    name: Option<String>,
    store: Option<String>,
    alias: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    output: Option<String>,
    server: Option<String>,
    upn: Option<String>,
    text: bool,
    aliases: bool,
    yes: bool,
}

/// Exact `strcmp` option parsing; `allowed` lists the options this command takes.
fn parse_vecs(args: &[String], allowed: &[&str]) -> Option<VecsArgs> {
    let mut a = VecsArgs::default();
    let mut it = args.iter();
    while let Some(opt) = it.next() {
        if !allowed.contains(&opt.as_str()) {
            return None;
        }
        match opt.as_str() {
            "--text" => a.text = true,
            "--aliases" => a.aliases = true,
            "-y" => a.yes = true,
            _ => {
                let v = it.next()?.clone();
                match opt.as_str() {
                    "--name" => a.name = Some(v),
                    "--store" => a.store = Some(v),
                    "--alias" => a.alias = Some(v),
                    "--cert" => a.cert = Some(v),
                    "--key" => a.key = Some(v),
                    "--output" => a.output = Some(v),
                    "--server" => a.server = Some(v),
                    "--upn" => a.upn = Some(v),
                    // --password, --user, --grant, --revoke: accepted, not needed here.
                    _ => {}
                }
            }
        }
    }
    Some(a)
}

fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

fn openssl_text(pem: &str, kind: &str) -> Option<String> {
    let mut child = Command::new("openssl")
        .args([kind, "-noout", "-text"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut stdin = child.stdin.take()?;
    let data = format!("{pem}\n");
    std::thread::spawn(move || {
        let _ = stdin.write_all(data.as_bytes());
    });
    let out = child.wait_with_output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn is_x509(pem: &str) -> bool {
    pem.starts_with("-----BEGIN CERTIFICATE-----")
}

fn vecs_cli(host: &SimHost, mut state: VcsaState, args: &[String]) -> i32 {
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    let (cmd, rest): (&[&str], &[String]) = match words.as_slice() {
        ["help", ..] => {
            print!("{VECS_USAGE}");
            return 0;
        }
        ["force-refresh", ..] => (&["force-refresh"], &args[1..]),
        [a @ ("store" | "entry"), b, ..] => match (*a, *b) {
            ("store", "create" | "list" | "delete" | "permission" | "get-permissions")
            | ("entry", "create" | "list" | "getcert" | "getkey" | "delete") => {
                (&words[..2], &args[2..])
            }
            _ => return usage_fail(),
        },
        _ => return usage_fail(),
    };
    const REMOTE: [&str; 2] = ["--server", "--upn"];
    let allowed: Vec<&str> = match cmd {
        ["store", "create"] | ["store", "get-permissions"] => vec!["--name"],
        ["store", "list"] | ["force-refresh"] => vec![],
        ["store", "delete"] => vec!["--name", "-y"],
        ["store", "permission"] => vec!["--name", "--user", "--grant", "--revoke"],
        ["entry", "create"] => vec![
            "--store",
            "--alias",
            "--cert",
            "--key",
            "--password",
            "--text",
        ],
        ["entry", "list"] => vec!["--store", "--text", "--aliases"],
        ["entry", "getcert"] => vec!["--store", "--alias", "--output", "--text"],
        ["entry", "getkey"] => vec!["--store", "--alias", "--password", "--output", "--text"],
        ["entry", "delete"] => vec!["--store", "--alias", "-y"],
        _ => vec![],
    };
    let allowed: Vec<&str> = allowed.into_iter().chain(REMOTE).collect();
    let Some(a) = parse_vecs(rest, &allowed) else {
        return usage_fail();
    };
    match (&a.server, &a.upn) {
        (Some(_), None) | (None, Some(_)) => {
            eprint!("Error: You have to provide both server and upn \n");
            return vecs_fail(ERROR_INVALID_PARAMETER);
        }
        (Some(_), Some(_)) => {
            print!("Enter password:\t");
            let _ = std::io::stdout().flush();
            let mut line = String::new();
            let _ = std::io::stdin().lock().read_line(&mut line);
        }
        _ => {}
    }
    // VECS ACLs: root owns the system stores (§2.2).
    if effective_uid().is_some_and(|u| u != 0) {
        return vecs_fail(ERROR_ACCESS_DENIED);
    }
    let code = match cmd {
        ["store", "list"] => store_list(&state),
        ["store", "create"] => store_create(host, &mut state, &a),
        ["store", "delete"] => store_delete(host, &mut state, &a),
        ["store", "permission"] | ["store", "get-permissions"] => 0,
        ["force-refresh"] => force_refresh(host, &mut state),
        ["entry", "list"] => entry_list(&state, &a),
        ["entry", "getcert"] => entry_get(&state, &a, false),
        ["entry", "getkey"] => entry_get(&state, &a, true),
        ["entry", "create"] => entry_create(host, &mut state, &a),
        ["entry", "delete"] => entry_delete(host, &mut state, &a),
        _ => usage_fail(),
    };
    let _ = std::io::stdout().flush();
    code
}

/// `vecs-cli force-refresh`: vmafd copies the CA certificates published in vmdir into
/// `TRUSTED_ROOTS` (alias: SHA-1 of the DER, as the build names them). [UNV] The real command
/// also refreshes `TRUSTED_ROOT_CRLS` and never removes entries; it prints nothing on success
/// (§2.2 gives no message for it).
fn force_refresh(host: &SimHost, s: &mut VcsaState) -> i32 {
    let mut changed = false;
    for pem in s.vmdir_cas.clone() {
        let Ok(alias) = super::sha1_alias(&pem) else {
            continue;
        };
        if s.store("TRUSTED_ROOTS").is_none() {
            s.stores.push(VecsStore {
                name: "TRUSTED_ROOTS".into(),
                entries: Vec::new(),
            });
        }
        let st = s.store_mut("TRUSTED_ROOTS").expect("just created");
        if !st.entries.iter().any(|e| e.alias == alias) {
            st.entries.push(VecsEntry {
                alias,
                entry_type: EntryType::TrustedCert,
                cert: Some(pem.trim_end().to_owned()),
                key: None,
            });
            changed = true;
        }
    }
    if changed && !save(host, s) {
        return vecs_fail(ERROR_ACCESS_DENIED);
    }
    0
}

fn store_list(s: &VcsaState) -> i32 {
    if s.stores.is_empty() {
        eprint!("No stores found\n");
    }
    for st in &s.stores {
        println!("{}", st.name);
    }
    0
}

fn save(host: &SimHost, s: &VcsaState) -> bool {
    s.save(host).is_ok()
}

fn store_create(host: &SimHost, s: &mut VcsaState, a: &VecsArgs) -> i32 {
    let name = a.name.clone().unwrap_or_default();
    if name.is_empty() {
        eprint!("Error : An invalid store name [] was specified \n");
        return vecs_fail(ERROR_INVALID_PARAMETER);
    }
    if s.store(&name).is_some() {
        return vecs_fail(ERROR_ALREADY_EXISTS);
    }
    s.stores.push(VecsStore {
        name: name.clone(),
        entries: Vec::new(),
    });
    if !save(host, s) {
        return vecs_fail(ERROR_ACCESS_DENIED);
    }
    print!("Successfully created store [{name}]\n");
    0
}

/// Reads one character from stdin and says whether it was `Y`/`y` (§2.2 prompts).
fn confirm(prompt: &str) -> bool {
    print!("{prompt}");
    let _ = std::io::stdout().flush();
    let mut b = [0u8; 1];
    matches!(std::io::stdin().read(&mut b), Ok(1)) && (b[0] == b'Y' || b[0] == b'y')
}

fn store_delete(host: &SimHost, s: &mut VcsaState, a: &VecsArgs) -> i32 {
    let name = a.name.clone().unwrap_or_default();
    if s.store(&name).is_none() {
        eprint!("Error : Store [{name}] does not exist\n");
        return vecs_fail(ERROR_OBJECT_NOT_FOUND);
    }
    if ["MACHINE_SSL_CERT", "TRUSTED_ROOTS", "TRUSTED_ROOT_CRLS"].contains(&name.as_str()) {
        return vecs_fail(ERROR_ACCESS_DENIED);
    }
    if !a.yes
        && !confirm(&format!(
            "Warning: This operation will delete store [{name}]\nDo you wish to continue? Y/N [N] \n"
        ))
    {
        return 0;
    }
    s.stores.retain(|st| st.name != name);
    if !save(host, s) {
        return vecs_fail(ERROR_ACCESS_DENIED);
    }
    print!("Successfully deleted store [{name}]\n");
    0
}

fn entry_list(s: &VcsaState, a: &VecsArgs) -> i32 {
    let Some(store) = a.store.as_deref().and_then(|n| s.store(n)) else {
        return vecs_fail(ERROR_OBJECT_NOT_FOUND);
    };
    let mut out = std::io::stdout().lock();
    let _ = write!(
        out,
        "Number of entries in store :\t{}\n",
        store.entries.len()
    );
    for e in &store.entries {
        // One entry per IPC round-trip: latency grows with the entry count (§2.3, §11.4).
        if s.list_latency_ms > 0 {
            std::thread::sleep(Duration::from_millis(s.list_latency_ms));
        }
        if a.aliases {
            let _ = writeln!(out, "{}", e.alias);
            continue;
        }
        let _ = write!(
            out,
            "Alias :\t{}\nEntry type :\t{}\n",
            e.alias,
            e.entry_type.as_str()
        );
        match (&e.cert, a.text) {
            (Some(pem), true) => {
                // X509_print_fp; a CRL (or damaged PEM) fails PEM_read_bio_X509: nothing printed.
                if is_x509(pem)
                    && let Some(text) = openssl_text(pem, "x509")
                {
                    let _ = out.write_all(text.as_bytes());
                }
            }
            (cert, _) => {
                let _ = write!(out, "Certificate :\t{}\n\n", cert.as_deref().unwrap_or(""));
            }
        }
        let _ = out.flush();
    }
    0
}

fn find_entry<'a>(s: &'a VcsaState, a: &VecsArgs) -> Result<&'a VecsEntry, i32> {
    let (store, alias) = (
        a.store.clone().unwrap_or_default(),
        a.alias.clone().unwrap_or_default(),
    );
    if store.is_empty() || alias.is_empty() {
        eprint!("Error: The store name [{store}] or the Alias [{alias}] is invalid \n");
        return Err(vecs_fail(ERROR_INVALID_PARAMETER));
    }
    let Some(st) = s.store(&store) else {
        eprint!("Error: Failed to open the store.\n");
        return Err(vecs_fail(ERROR_OBJECT_NOT_FOUND));
    };
    st.entries
        .iter()
        .find(|e| e.alias == alias)
        .ok_or_else(|| vecs_fail(ERROR_OBJECT_NOT_FOUND))
}

fn entry_get(s: &VcsaState, a: &VecsArgs, key: bool) -> i32 {
    let e = match find_entry(s, a) {
        Ok(e) => e,
        Err(code) => return code,
    };
    let body = if key {
        match (&e.key, e.entry_type) {
            (Some(k), EntryType::PrivateKey) => {
                if a.text {
                    openssl_text(k, "rsa").unwrap_or_default()
                } else {
                    format!("{}\n", k.trim_end())
                }
            }
            _ => {
                eprint!(
                    "Error: No key was found for entry [{}] of type [{}]\n",
                    e.alias,
                    e.entry_type.as_str()
                );
                return vecs_fail(ERROR_INVALID_PARAMETER);
            }
        }
    } else {
        match &e.cert {
            Some(c) if e.entry_type != EntryType::SecretKey => {
                if a.text {
                    openssl_text(c, if is_x509(c) { "x509" } else { "crl" }).unwrap_or_default()
                } else {
                    format!("{c}\n")
                }
            }
            _ => {
                eprint!(
                    "Error: No certificates were found for entry [{}] of type [{}].\n",
                    e.alias,
                    e.entry_type.as_str()
                );
                return vecs_fail(ERROR_INVALID_PARAMETER);
            }
        }
    };
    match &a.output {
        Some(path) => match super::write_private(std::path::Path::new(path), body.as_bytes()) {
            Ok(()) => 0,
            Err(_) => {
                eprint!("Error: Failed to open file [{path}] \n");
                vecs_fail(ERROR_FILE_NOT_FOUND)
            }
        },
        None => {
            print!("{body}");
            0
        }
    }
}

fn entry_create(host: &SimHost, s: &mut VcsaState, a: &VecsArgs) -> i32 {
    if a.cert.is_none() && a.key.is_none() {
        eprint!("Error: A certificate or a key must be specified. \n");
        return vecs_fail(ERROR_INVALID_PARAMETER);
    }
    let read = |p: &Option<String>| -> Result<Option<String>, i32> {
        match p {
            None => Ok(None),
            Some(p) => std::fs::read_to_string(p)
                .map(|t| Some(t.trim_end().to_owned()))
                .map_err(|_| {
                    eprint!("Error: Failed to open file [{p}] \n");
                    vecs_fail(ERROR_FILE_NOT_FOUND)
                }),
        }
    };
    let (cert, key) = match (read(&a.cert), read(&a.key)) {
        (Ok(c), Ok(k)) => (c, k),
        (Err(code), _) | (_, Err(code)) => return code,
    };
    let store_name = a.store.clone().unwrap_or_default();
    let alias = match (&a.alias, &cert) {
        (Some(al), _) => al.clone(),
        (None, Some(c)) => super::sha1_alias(c).unwrap_or_default(),
        (None, None) => String::new(),
    };
    let entry_type = match (&key, &cert) {
        (Some(_), _) => EntryType::PrivateKey,
        (None, Some(c)) if c.contains("BEGIN X509 CRL") => EntryType::Crl,
        _ => EntryType::TrustedCert,
    };
    let denied = s.deny_create.contains(&store_name);
    let Some(store) = s.store_mut(&store_name) else {
        eprint!("Error: Failed to open the store.\n");
        return vecs_fail(ERROR_OBJECT_NOT_FOUND);
    };
    if denied {
        s.deny_create.retain(|x| x != &store_name);
        save(host, s);
        return vecs_fail(ERROR_ACCESS_DENIED);
    }
    if store.entries.iter().any(|e| e.alias == alias) {
        return vecs_fail(ERROR_ALREADY_EXISTS);
    }
    store.entries.push(VecsEntry {
        alias: alias.clone(),
        entry_type,
        cert,
        key,
    });
    if !save(host, s) {
        return vecs_fail(ERROR_ACCESS_DENIED);
    }
    print!("Entry with alias [{alias}] in store [{store_name}] was created successfully \n");
    0
}

fn entry_delete(host: &SimHost, s: &mut VcsaState, a: &VecsArgs) -> i32 {
    let (store_name, alias) = (
        a.store.clone().unwrap_or_default(),
        a.alias.clone().unwrap_or_default(),
    );
    if s.store(&store_name).is_none() {
        eprint!("Error: Failed to open the store\n");
        return vecs_fail(ERROR_OBJECT_NOT_FOUND);
    }
    if s.entry(&store_name, &alias).is_none() {
        return vecs_fail(ERROR_OBJECT_NOT_FOUND);
    }
    if !a.yes
        && !confirm(&format!(
            "Warning: This operation will delete entry [{alias}] from store [{store_name}]\nDo you wish to continue? Y/N [N] \n"
        ))
    {
        // Not Y/y: nothing deleted, exit 0 (§2.2).
        return 0;
    }
    // rhttpproxy keeps serving the certificate it loaded until it is restarted (§9.1 guard).
    if store_name == "MACHINE_SSL_CERT"
        && alias == "__MACHINE_CERT"
        && s.https_pinned.is_none()
        && s.services
            .iter()
            .any(|x| x.name == "rhttpproxy" && x.run_state == "STARTED")
        && let Some(old) = s.entry(&store_name, &alias).cloned()
    {
        s.https_pinned = Some((old.cert.unwrap_or_default(), old.key.unwrap_or_default()));
    }
    let Some(store) = s.store_mut(&store_name) else {
        return vecs_fail(ERROR_OBJECT_NOT_FOUND);
    };
    store.entries.retain(|e| e.alias != alias);
    if !save(host, s) {
        return vecs_fail(ERROR_ACCESS_DENIED);
    }
    print!("Deleted entry with alias [{alias}] in store [{store_name}] successfully\n ");
    0
}

// === vmafd-cli ===

fn vmafd_cli(s: &VcsaState, args: &[String]) -> i32 {
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    let (cmd, rest) = match words.split_first() {
        Some((c, r)) => (*c, r),
        None => ("", &[][..]),
    };
    // Every get-* takes --server-name <name> [DER: usage/exit for a missing one].
    let server_ok = matches!(rest, ["--server-name", name] if !name.is_empty());
    let value = match cmd {
        "get-pnid" | "get-dc-name" => s.pnid.clone(),
        "get-machine-id" => s.machine_id.clone(),
        "get-domain-name" => s.domain.clone(),
        "get-site-name" => s.site.clone(),
        "get-ls-location" => format!("https://{}/lookupservice/sdk", s.pnid),
        "get-pnid-url" => format!("https://{}/", s.pnid),
        "get-domain-state" => "Controller".into(),
        "get-status" => "Running".into(),
        "get-rhttpproxy-port" => "443".into(),
        "get-machine-account-info" => {
            format!(
                "MachineAccount: {}\nPassword: {}",
                s.machine_account_dn, s.machine_account_password
            )
        }
        _ => String::new(),
    };
    if value.is_empty() || !server_ok {
        eprintln!("Usage: vmafd-cli <command> --server-name <server-name>");
        eprintln!(
            "vmafd-cli failed. Error 87: Operation failed with error ERROR_INVALID_PARAMETER (87) "
        );
        return 87;
    }
    println!("{value}");
    0
}

// === vdcrepadmin ===

const VDCREPADMIN_USAGE: &str = "vdcrepadmin -f showpartners|showpartnerstatus|showfederationstatus|showservers|isfirstcycledone ... -h <source_hostname> [-p <port>] -u <source_username> [-w <source_password>]\n";

fn vdcrepadmin(s: &VcsaState, args: &[String]) -> i32 {
    let mut feature = None;
    let mut host = None;
    let mut user = None;
    let mut password = None;
    let mut it = args.iter();
    while let Some(o) = it.next() {
        let v = it.next().cloned();
        match (o.as_str(), v) {
            ("-f", Some(v)) => feature = Some(v),
            ("-h", Some(v)) => host = Some(v),
            ("-u", Some(v)) => user = Some(v),
            ("-w", Some(v)) => password = Some(v),
            ("-p", Some(_)) => {}
            _ => {
                print!("{VDCREPADMIN_USAGE}");
                return 1;
            }
        }
    }
    let (Some(feature), Some(_host), Some(_user)) = (feature, host, user) else {
        print!("{VDCREPADMIN_USAGE}");
        return 1;
    };
    let password = match password {
        Some(p) => p,
        None => {
            print!("password: ");
            let _ = std::io::stdout().flush();
            let mut line = String::new();
            let _ = std::io::stdin().lock().read_line(&mut line);
            line.trim_end_matches(['\r', '\n']).to_owned()
        }
    };
    if password != s.sso_password {
        // [DER] wording: an LDAP bind failure, on stderr, exit 49 (LDAP_INVALID_CREDENTIALS).
        eprintln!("VdcRepAdmin failed. Error 49: Invalid credentials");
        return 49;
    }
    let mut out = String::new();
    match feature.as_str() {
        "showpartners" => {
            for p in &s.partners {
                out.push_str(&format!("ldap://{}\n", p.host));
            }
        }
        "showpartnerstatus" => {
            let blocks: Vec<String> = s
                .partners
                .iter()
                .map(|p| {
                    let yn = |b: bool| if b { "Yes" } else { "No" };
                    let mut b = format!("Partner: {}\nHost available:   {}\n", p.host, yn(p.host_available));
                    if p.host_available {
                        b.push_str(&format!("Status available: {}\n", yn(p.status_available)));
                        if p.status_available {
                            b.push_str(&format!(
                                "My last change number:             {}\nPartner has seen my change number: {}\nPartner is {} changes behind.\n",
                                p.my_usn,
                                p.partner_seen_usn,
                                p.my_usn - p.partner_seen_usn
                            ));
                        }
                    }
                    b
                })
                .collect();
            out = blocks.join("\n");
        }
        _ => {
            print!("{VDCREPADMIN_USAGE}");
            return 1;
        }
    }
    print!("{out}");
    0
}

// === vmon-cli ===

fn vmon_cli(s: &VcsaState, args: &[String]) -> i32 {
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    let find = |n: &str| s.services.iter().find(|x| x.name == n);
    match words.as_slice() {
        ["--list" | "-l"] => {
            for x in &s.services {
                println!("{}", x.name);
            }
            0
        }
        ["--status" | "-s", name] => match find(name) {
            Some(x) => {
                let running = x.run_state == "STARTED";
                print!(
                    "Name: {}\nStarttype: {}\nRunState: {}\nRunAsUser: root\nCurrentRunStateDuration(ms): 72360341\nHealthState: {}\nFailStop: N/A\nMainProcessId: {}\n",
                    x.name,
                    x.start_type,
                    x.run_state,
                    if running { x.health.as_str() } else { "N/A" },
                    if running { "15679" } else { "N/A" }
                );
                0
            }
            None => {
                // [DER]
                eprintln!("Failed to get status of service {name}. Error: Service not found");
                1
            }
        },
        ["--restart" | "-r", name] if find(name).is_some() => {
            println!("Completed Restart service request.");
            0
        }
        _ => {
            eprintln!(
                "Usage: vmon-cli [--list] [--status <svc>] [--restart <svc>] [--start <svc>] [--stop <svc>]"
            );
            1
        }
    }
}

// === lwregshell ===

fn reg_escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"")
}

fn lwregshell(s: &VcsaState, args: &[String]) -> i32 {
    let (Some("list_values"), Some(key)) = (args.first().map(String::as_str), args.get(1)) else {
        eprintln!("Usage: lwregshell list_values <key>");
        return 1;
    };
    let key = key
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    let values: Vec<(&str, String)> = match key.as_str() {
        r"hkey_this_machine\services\vmdir" => vec![
            ("dcAccount", s.pnid.clone()),
            ("dcAccountDN", s.machine_account_dn.clone()),
            ("dcAccountPassword", s.machine_account_password.clone()),
        ],
        r"hkey_this_machine\services\vmafd\parameters" => vec![
            ("DCName", s.pnid.clone()),
            ("DomainName", s.domain.clone()),
            ("MachineID", s.machine_id.clone()),
            ("PNID", s.pnid.clone()),
            ("SiteName", s.site.clone()),
        ],
        _ => {
            // [DER]
            eprintln!("Error: the key '[{key}]' was not found");
            return 1;
        }
    };
    for (name, value) in values {
        let quoted = format!("\"{name}\"");
        println!("+  {quoted:<28}REG_SZ          \"{}\"", reg_escape(&value));
    }
    0
}

//! The simulated `dir-cli` (`shared/reference/vsphere.md` §8.4), backed by the real vmdir
//! (slapd) through the real `ldapsearch`/`ldapmodify`, bound as the SSO administrator:
//!
//! * `service list [--login L] [--password P]` → `"%d. %s\n"` per service principal.
//! * `service update --name <user>-<machine-id> --cert FILE [--login L] [--password P]` →
//!   replaces `userCertificate` on `cn=<name>,cn=ServicePrincipals,<dn>` and prints
//!   `Service [<name>] updated successfully`.
//!
//! Option names are case-sensitive; `--login` defaults to `administrator` and may carry
//! `@<domain>`; without `--password` it prompts `Enter password for <user>@<domain>: ` and
//! reads one line. Failures print `dir-cli failed. Error <n>: <desc> \n` on stderr and exit
//! with `n & 0xFF` (the reference gives the format, not the codes: the codes below are the LDAP
//! result codes slapd returned, marked [DER]).
//!
//! `service update` refuses a certificate any service principal already holds, the target
//! included: `Error: The same certificate cannot be used by multiple services [<name>].` on
//! stdout and ERROR_INVALID_DATA (13), as `DirCliUpdateServiceA` in lightwave
//! `vmafd/tools/dir-cli/cli.c` does. [UNV] the generic `dir-cli failed` line's wording for 13.

// The format strings are kept as in the C source (`\n` and all).
#![allow(clippy::print_with_newline)]

use std::io::{BufRead, Write};
use std::process::{Command, Stdio};

use base64::Engine;

use super::VcsaState;
use super::vmdir::admin_dn;

const LDAP_NO_SUCH_OBJECT: i32 = 32;
const LDAP_INSUFFICIENT_ACCESS: i32 = 50;
const LDAP_INVALID_CREDENTIALS: i32 = 49;
const ERROR_INVALID_PARAMETER: i32 = 87;
const ERROR_INVALID_DATA: i32 = 13;

/// The service principal (cn) whose `userCertificate` is `der`, if any.
fn principal_holding(
    s: &VcsaState,
    uri: &str,
    base: &str,
    password: &str,
    der: &[u8],
) -> Result<Option<String>, i32> {
    let out = Command::new("/usr/bin/ldapsearch")
        .args(["-LLL", "-o", "ldif-wrap=no", "-x", "-H", uri, "-D"])
        .arg(admin_dn(s))
        .args(["-w", password, "-b", base, "-s", "one"])
        .args(["(objectclass=vmwServicePrincipal)", "cn", "userCertificate"])
        .output()
        .map_err(|e| fail(1, &format!("cannot run ldapsearch: {e}")))?;
    if !out.status.success() {
        return Err(ldap_fail(out.status.code().unwrap_or(1)));
    }
    let want = base64::engine::general_purpose::STANDARD.encode(der);
    let mut cn = String::new();
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(dn) = l.strip_prefix("dn: cn=") {
            cn = dn.split(',').next().unwrap_or_default().to_owned();
        } else if l.strip_prefix("userCertificate:: ") == Some(want.as_str()) {
            return Ok(Some(cn));
        }
    }
    Ok(None)
}

fn fail(code: i32, desc: &str) -> i32 {
    eprint!("dir-cli failed. Error {code}: {desc} \n");
    code & 0xff
}

fn usage() -> i32 {
    // [DER] excerpt in the layout of §8.4.
    print!(
        "Usage: dir-cli {{ arguments }}\n\
         \tservice list\n\
         \t             [ --login    <admin user id>            ]\n\
         \t             [ --password <password>                 ]\n\
         \tservice update\n\
         \t               --name <name>\n\
         \t               --cert <path to cert file>\n\
         \t             [ --login    <admin user id>            ]\n\
         \t             [ --password <password>                 ]\n"
    );
    fail(ERROR_INVALID_PARAMETER, "Invalid parameter")
}

/// Runs `dir-cli ARGS` against the state's vmdir; returns the exit status.
pub fn run(host: &crate::sim::SimHost, s: &VcsaState, args: &[String]) -> i32 {
    let (cmd, rest) = match args {
        [a, b, rest @ ..] => (format!("{a} {b}"), rest),
        _ => return usage(),
    };
    let mut opts = std::collections::BTreeMap::new();
    let mut it = rest.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--login" | "--password" | "--name" | "--cert" | "--server-name" => match it.next() {
                Some(v) => {
                    opts.insert(a.trim_start_matches("--").to_owned(), v.clone());
                }
                None => return usage(),
            },
            _ => return usage(),
        }
    }
    let login = opts
        .get("login")
        .cloned()
        .unwrap_or_else(|| "administrator".into());
    let (user, domain) = match login.split_once('@') {
        Some((u, d)) => (u.to_owned(), d.to_owned()),
        None => (login.clone(), s.domain.clone()),
    };
    let password = match opts.get("password") {
        Some(p) => p.clone(),
        None => {
            print!("Enter password for {user}@{domain}: ");
            let _ = std::io::stdout().flush();
            let mut line = String::new();
            let _ = std::io::stdin().lock().read_line(&mut line);
            line.trim_end_matches(['\r', '\n']).to_owned()
        }
    };
    if !user.eq_ignore_ascii_case("administrator") || !domain.eq_ignore_ascii_case(&s.domain) {
        return fail(LDAP_INVALID_CREDENTIALS, "Invalid credentials");
    }
    let uri = format!("ldap://127.0.0.1:{}", s.ldap_port);
    let base = format!("cn=ServicePrincipals,{}", s.domain_dn());
    match cmd.as_str() {
        "service list" => {
            let out = Command::new("/usr/bin/ldapsearch")
                .args(["-LLL", "-o", "ldif-wrap=no", "-x", "-H", &uri, "-D"])
                .arg(admin_dn(s))
                .args(["-w", &password, "-b", &base, "-s", "one"])
                .args(["(objectclass=vmwServicePrincipal)", "cn"])
                .output();
            let out = match out {
                Ok(o) => o,
                Err(e) => return fail(1, &format!("cannot run ldapsearch: {e}")),
            };
            if !out.status.success() {
                return ldap_fail(out.status.code().unwrap_or(1));
            }
            let text = String::from_utf8_lossy(&out.stdout);
            for (i, cn) in text
                .lines()
                .filter_map(|l| l.strip_prefix("cn: "))
                .enumerate()
            {
                print!("{}. {}\n", i + 1, cn);
            }
            0
        }
        "service update" => {
            let (Some(name), Some(cert)) = (opts.get("name"), opts.get("cert")) else {
                return usage();
            };
            let der = match std::fs::read(cert)
                .ok()
                .and_then(|b| certfleet_common::pem::first_certificate(&b).ok())
            {
                Some(d) => d,
                None => {
                    eprint!("The file [{cert}] contains no certificates\n");
                    return fail(ERROR_INVALID_PARAMETER, "Invalid parameter");
                }
            };
            if s.deny_service_update.contains(name) {
                // Injected once: vmdir refuses the write (LDAP insufficient access) [DER].
                let mut st = s.clone();
                st.deny_service_update.retain(|x| x != name);
                let _ = st.save(host);
                return fail(LDAP_INSUFFICIENT_ACCESS, "Insufficient access");
            }
            // DirCliUpdateServiceA (lightwave vmafd/tools/dir-cli/cli.c): any service principal
            // already holding this certificate (by fingerprint), the target included, is refused
            // with ERROR_INVALID_DATA before anything is written.
            match principal_holding(s, &uri, &base, &password, &der) {
                Ok(Some(other)) => {
                    print!(
                        "Error: The same certificate cannot be used by multiple services [{other}].\n"
                    );
                    return fail(
                        ERROR_INVALID_DATA,
                        "Operation failed with error ERROR_INVALID_DATA (13)",
                    );
                }
                Ok(None) => {}
                Err(code) => return code,
            }
            let ldif = format!(
                "dn: cn={name},{base}\nchangetype: modify\nreplace: userCertificate\nuserCertificate:: {}\n-\n",
                base64::engine::general_purpose::STANDARD.encode(der)
            );
            let child = Command::new("/usr/bin/ldapmodify")
                .args(["-x", "-H", &uri, "-D"])
                .arg(admin_dn(s))
                .args(["-w", &password])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            let mut child = match child {
                Ok(c) => c,
                Err(e) => return fail(1, &format!("cannot run ldapmodify: {e}")),
            };
            if let Some(mut stdin) = child.stdin.take() {
                let _ = stdin.write_all(ldif.as_bytes());
            }
            match child.wait() {
                Ok(st) if st.success() => {
                    print!("Service [{name}] updated successfully\n");
                    0
                }
                Ok(st) => ldap_fail(st.code().unwrap_or(1)),
                Err(e) => fail(1, &e.to_string()),
            }
        }
        _ => usage(),
    }
}

fn ldap_fail(code: i32) -> i32 {
    match code {
        LDAP_INVALID_CREDENTIALS => fail(code, "Invalid credentials"),
        LDAP_NO_SUCH_OBJECT => fail(code, "No such object"),
        // ldapsearch/ldapmodify exit 255 when slapd is not reachable.
        255 => fail(9127, "Server down"),
        n => fail(n, "Operation failed"),
    }
}

//! A kubeadm control-plane node: the PKI under `/etc/kubernetes/pki`, the certificates embedded
//! in the `/etc/kubernetes/*.conf` kubeconfigs, the kubelet's rotating client certificate, and
//! a cross-check against `kubeadm certs check-expiration` when the tool is there.
//!
//! The files are the truth; kubeadm's table is read only to catch disagreement (a renewed file
//! the tool does not see, a file the tool reports missing), which becomes a problem naming both.
//! Settings: `kubeadm.cert_dir` (default `/etc/kubernetes/pki`), `kubeadm.kubeconfig_dir`
//! (default `/etc/kubernetes`); tool path `kubeadm` (default `/usr/bin/kubeadm`).

use std::collections::BTreeMap;
use std::path::Path;

use certfleet_common::model::{Location, Problem};

use super::kubeconfig::{self, Roles};
use super::{Collection, Collector, read_small_file};
use crate::config::AgentConfig;
use crate::exec;

/// The `kubeadm` collector.
pub struct Kubeadm;

const NAME: &str = "kubeadm";
const DEFAULT_CERT_DIR: &str = "/etc/kubernetes/pki";
const DEFAULT_KUBECONFIG_DIR: &str = "/etc/kubernetes";
const DEFAULT_KUBEADM: &str = "/usr/bin/kubeadm";

/// `(file under the cert dir, kubeadm's name for it, role)`, as in `kubeadm certs
/// check-expiration` (reference C1/C2).
const PKI: &[(&str, &str, &str)] = &[
    ("ca.crt", "ca", "kubeadm.ca"),
    ("etcd/ca.crt", "etcd-ca", "kubeadm.etcd.ca"),
    (
        "front-proxy-ca.crt",
        "front-proxy-ca",
        "kubeadm.front-proxy-ca",
    ),
    ("apiserver.crt", "apiserver", "kubeadm.apiserver"),
    (
        "apiserver-etcd-client.crt",
        "apiserver-etcd-client",
        "kubeadm.apiserver-etcd-client",
    ),
    (
        "apiserver-kubelet-client.crt",
        "apiserver-kubelet-client",
        "kubeadm.apiserver-kubelet-client",
    ),
    (
        "etcd/healthcheck-client.crt",
        "etcd-healthcheck-client",
        "kubeadm.etcd.healthcheck-client",
    ),
    ("etcd/peer.crt", "etcd-peer", "kubeadm.etcd.peer"),
    ("etcd/server.crt", "etcd-server", "kubeadm.etcd.server"),
    (
        "front-proxy-client.crt",
        "front-proxy-client",
        "kubeadm.front-proxy-client",
    ),
];

/// The kubeconfigs kubeadm writes, with the role of their client certificate.
const CONFS: &[(&str, &str)] = &[
    ("admin.conf", "kubeadm.kubeconfig.admin"),
    ("super-admin.conf", "kubeadm.kubeconfig.super-admin"),
    (
        "controller-manager.conf",
        "kubeadm.kubeconfig.controller-manager",
    ),
    ("scheduler.conf", "kubeadm.kubeconfig.scheduler"),
    ("kubelet.conf", "kubeadm.kubelet.client"),
];

impl Collector for Kubeadm {
    fn name(&self) -> &'static str {
        NAME
    }

    fn detect(&self, cfg: &AgentConfig) -> bool {
        cfg.host_path(format!("{}/ca.crt", cert_dir(cfg))).is_file()
    }

    fn collect(&self, cfg: &AgentConfig, out: &mut Collection) {
        let dir = cert_dir(cfg);
        // kubeadm name -> not-after we read from the file.
        let mut seen: BTreeMap<String, i64> = BTreeMap::new();
        let mut files: Vec<String> = Vec::new();
        list_certs(cfg, &dir, "", &mut files, out);
        files.sort();
        for rel in &files {
            let host = format!("{dir}/{rel}");
            let (kname, role) = PKI
                .iter()
                .find(|(f, _, _)| f == rel)
                .map(|(_, n, r)| (Some(*n), *r))
                .unwrap_or((None, "kubeadm.other"));
            let bytes = match read_small_file(&cfg.host_path(&host)) {
                Ok(b) => b,
                Err(e) => {
                    out.problem(Problem::error(NAME, &host, e));
                    continue;
                }
            };
            let fps = out.add_blob(NAME, &bytes, role, Location::file("file", &host));
            if let (Some(n), Some(fp)) = (kname, fps.first())
                && let Some(rec) = out.get(fp)
            {
                seen.insert(n.to_owned(), rec.not_after);
            }
        }

        let kdir = cfg
            .setting("kubeadm.kubeconfig_dir")
            .unwrap_or(DEFAULT_KUBECONFIG_DIR)
            .trim_end_matches('/')
            .to_owned();
        for (conf, role) in CONFS {
            let host = format!("{kdir}/{conf}");
            if !cfg.host_path(&host).exists() {
                // super-admin.conf exists only from 1.29 and only on the first control-plane node.
                if *conf != "super-admin.conf" {
                    out.problem(Problem::warning(NAME, &host, "kubeconfig missing"));
                }
                continue;
            }
            let roles = Roles {
                cluster_ca: "kubeadm.ca".into(),
                client: (*role).into(),
            };
            if let Some(s) = kubeconfig::collect(cfg, NAME, &host, &roles, out)
                && let Some((_, fp)) = s.clients.first()
                && let Some(rec) = out.get(fp)
            {
                seen.insert((*conf).to_owned(), rec.not_after);
            }
        }

        let kubeadm = cfg.tool("kubeadm", DEFAULT_KUBEADM);
        if kubeadm.is_file() {
            cross_check(cfg, &kubeadm, &dir, &seen, out);
        }
    }
}

fn cert_dir(cfg: &AgentConfig) -> String {
    cfg.setting("kubeadm.cert_dir")
        .unwrap_or(DEFAULT_CERT_DIR)
        .trim_end_matches('/')
        .to_owned()
}

/// Certificate files (`*.crt`, `*.pem`) under the cert dir and one level of subdirectories.
fn list_certs(
    cfg: &AgentConfig,
    dir: &str,
    sub: &str,
    files: &mut Vec<String>,
    out: &mut Collection,
) {
    let host = if sub.is_empty() {
        dir.to_owned()
    } else {
        format!("{dir}/{sub}")
    };
    let rd = match std::fs::read_dir(cfg.host_path(&host)) {
        Ok(rd) => rd,
        Err(e) => {
            out.problem(Problem::error(NAME, &host, format!("cannot list: {e}")));
            return;
        }
    };
    for e in rd.filter_map(Result::ok) {
        let Some(name) = e.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let rel = if sub.is_empty() {
            name.clone()
        } else {
            format!("{sub}/{name}")
        };
        let ft = match e.file_type() {
            Ok(t) => t,
            Err(_) => continue,
        };
        if ft.is_dir() && sub.is_empty() {
            list_certs(cfg, dir, &name, files, out);
        } else if name.ends_with(".crt") || name.ends_with(".pem") {
            files.push(rel);
        }
    }
}

/// One row of `kubeadm certs check-expiration`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpirationRow {
    /// `admin.conf`, `apiserver`, `ca`, …
    pub name: String,
    /// Not-after at minute precision, Unix seconds; `None` for `!MISSING!`.
    pub expires: Option<i64>,
    /// `EXTERNALLY MANAGED` column.
    pub external: bool,
}

/// Parses both tables of `kubeadm certs check-expiration` (reference C2). Lines before the
/// first header (`[check-expiration] …`) are skipped.
pub fn parse_check_expiration(text: &str) -> Result<Vec<ExpirationRow>, String> {
    let mut rows = Vec::new();
    let mut in_table = false;
    let mut headers = 0;
    for line in text.lines() {
        let t = line.trim_end();
        if t.starts_with("CERTIFICATE ") {
            in_table = true;
            headers += 1;
            continue;
        }
        if !in_table || t.is_empty() {
            continue;
        }
        if let Some(name) = t.strip_prefix("!MISSING! ") {
            rows.push(ExpirationRow {
                name: name.trim().to_owned(),
                expires: None,
                external: false,
            });
            continue;
        }
        // name, then "Mon DD, YYYY HH:MM ZONE", residual, [CA], yes/no
        let fields: Vec<&str> = t.split_whitespace().collect();
        if fields.len() < 7 {
            return Err(format!("unrecognised row {t:?}"));
        }
        if fields[5] != "UTC" {
            return Err(format!("row {t:?}: time zone {} (expected UTC)", fields[5]));
        }
        let when = parse_go_date(fields[1], fields[2], fields[3], fields[4])
            .ok_or_else(|| format!("row {t:?}: unreadable date"))?;
        let external = match fields[fields.len() - 1] {
            "yes" => true,
            "no" => false,
            other => return Err(format!("row {t:?}: externally managed {other:?}")),
        };
        rows.push(ExpirationRow {
            name: fields[0].to_owned(),
            expires: Some(when),
            external,
        });
    }
    if headers == 0 {
        return Err("no CERTIFICATE table in the output".into());
    }
    Ok(rows)
}

/// `Jan` `02,` `2006` `15:04` (Go's `"Jan 02, 2006 15:04 MST"` in UTC) to Unix seconds.
fn parse_go_date(month: &str, day: &str, year: &str, hm: &str) -> Option<i64> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let m = MONTHS.iter().position(|x| *x == month)? as u8 + 1;
    let day: u8 = day.strip_suffix(',')?.parse().ok()?;
    let year: i32 = year.parse().ok()?;
    let (h, min) = hm.split_once(':')?;
    let (h, min): (u8, u8) = (h.parse().ok()?, min.parse().ok()?);
    let date = time::Date::from_calendar_date(year, time::Month::try_from(m).ok()?, day).ok()?;
    let t = time::Time::from_hms(h, min, 0).ok()?;
    Some(
        time::PrimitiveDateTime::new(date, t)
            .assume_utc()
            .unix_timestamp(),
    )
}

fn cross_check(
    cfg: &AgentConfig,
    kubeadm: &Path,
    dir: &str,
    seen: &BTreeMap<String, i64>,
    out: &mut Collection,
) {
    let host_dir = cfg.host_path(dir).display().to_string();
    let mut args = vec!["certs", "check-expiration"];
    if dir != DEFAULT_CERT_DIR || cfg.root != Path::new("/") {
        args.extend(["--cert-dir", &host_dir]);
    }
    let cmd = exec::command_line(kubeadm, &args);
    let rows = match exec::run_ok(kubeadm, &args, None, cfg.tool_timeout)
        .map_err(|e| e.to_string())
        .and_then(|o| parse_check_expiration(&o.stdout))
    {
        Ok(r) => r,
        Err(e) => {
            out.problem(Problem::error(NAME, cmd, e));
            return;
        }
    };
    for row in rows {
        let ours = seen.get(&row.name);
        match (row.expires, ours) {
            (Some(theirs), Some(&mine)) => {
                let mine_min = mine - mine.rem_euclid(60);
                if theirs != mine_min {
                    out.problem(Problem::error(
                        NAME,
                        &cmd,
                        format!(
                            "kubeadm reports {} expiring {} but the file says {}: kubeadm reads other files than the agent (check --cert-dir)",
                            row.name,
                            certfleet_common::model::format_time(theirs),
                            certfleet_common::model::format_time(mine)
                        ),
                    ));
                }
            }
            (None, Some(_)) => out.problem(Problem::error(
                NAME,
                &cmd,
                format!(
                    "kubeadm reports {} !MISSING! but the agent read it",
                    row.name
                ),
            )),
            (Some(theirs), None) => out.problem(Problem::warning(
                NAME,
                &cmd,
                format!(
                    "kubeadm reports {} (expiring {}) which the agent did not find",
                    row.name,
                    certfleet_common::model::format_time(theirs)
                ),
            )),
            // super-admin.conf exists only on the first control-plane node of kubeadm >= 1.29.
            (None, None) if row.name == "super-admin.conf" => {}
            (None, None) => out.problem(Problem::warning(
                NAME,
                &cmd,
                format!("{} is missing", row.name),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DOCS: &str = "CERTIFICATE                EXPIRES                  RESIDUAL TIME   CERTIFICATE AUTHORITY   EXTERNALLY MANAGED
admin.conf                 Dec 30, 2020 23:36 UTC   364d            ca                      no      
apiserver                  Dec 30, 2020 23:36 UTC   364d            ca                      no      
!MISSING! super-admin.conf                                                                  

CERTIFICATE AUTHORITY   EXPIRES                  RESIDUAL TIME   EXTERNALLY MANAGED
ca                      Dec 28, 2029 23:36 UTC   9y              no      
etcd-ca                 Dec 28, 2029 23:36 UTC   <invalid>       yes     
";

    #[test]
    fn reads_both_tables() {
        let rows = parse_check_expiration(&format!(
            "[check-expiration] Reading configuration\n\n{DOCS}"
        ))
        .unwrap();
        assert_eq!(rows.len(), 5);
        assert_eq!(rows[0].name, "admin.conf");
        assert_eq!(
            rows[0].expires,
            certfleet_common::model::parse_time("2020-12-30T23:36:00Z")
        );
        assert_eq!(
            rows[2],
            ExpirationRow {
                name: "super-admin.conf".into(),
                expires: None,
                external: false
            }
        );
        assert_eq!(rows[3].name, "ca");
        assert!(rows[4].external);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse_check_expiration("").is_err());
        assert!(parse_check_expiration("CERTIFICATE EXPIRES\napiserver soon\n").is_err());
    }

    proptest! {
        #[test]
        fn never_panics(text in "(CERTIFICATE [A-Z ]{0,10}\n|!MISSING! [a-z.]{0,8}\n|[a-z.-]{0,10} +[A-Z][a-z]{2} [0-9]{1,2}, [0-9]{4} [0-9]{2}:[0-9]{2} [A-Z]{3} +[0-9a-z<>]{0,5} +[a-z-]{0,6} +[a-z]{0,3} *\n|.{0,30}\n){0,8}") {
            let _ = parse_check_expiration(&text);
        }
    }
}

//! `vsphere.vmca_root`: a new VMCA root certificate, the first half of "reset all"
//! (certificate-manager option 8, reference vsphere.md §9.4) for a root that expired or is
//! about to.
//!
//! What VMware's tools run, in their order: `certool --genselfcacert` with a config file (a
//! new key and a self-signed CA certificate valid 10 years, lightwave vmca/certool
//! `HandleGenSelfCert`), `certool --rootca` (VMCA checks it is a CA and that the key is its
//! key, keeps the old files as `root.cer.0`/`privatekey.pem.0`, starts signing with the new
//! root and publishes it to vmdir: vmca/service `VMCAAddRootCertificate`), `vecs-cli
//! force-refresh` (vmafd copies it into `TRUSTED_ROOTS`), and vCert's copy into
//! `/etc/vmware-sso/keys/ssoserverRoot.crt`. The new root keeps the old one's subject (its
//! name, domain components, organisation…), so what names the VMCA root by subject still finds
//! it; its key is new, so certificates chain to it by key identifier.
//!
//! This action alone leaves every certificate signed by the old root in place: STS, Machine
//! SSL and solution users must be issued again from the new root, then every service
//! restarted. `certfleet recover vsphere` runs them right after it, in that order. The old
//! root stays in `TRUSTED_ROOTS` and vmdir: ESXi hosts and solutions may still present
//! certificates it signed (reference §9.5 removes it once nothing uses it).

use std::path::Path;

use serde_json::{Value, json};

use super::{CERTOOL, SSO_ROOT_COPY, VMCA_KEY, VMCA_ROOT, s, tool, vecs, workdir};
use crate::act::{ActContext, ActError, backup};
use crate::collect::vsphere::parse_entry_list;

/// A new root is valid 10 years; one that ends within a year is not what `--genselfcacert`
/// makes and is refused before VMCA is given it.
const MIN_NEW_ROOT_LIFE: i64 = 365 * 86_400;

/// The first certificate in `pem` (bytes read from `what`), parsed.
fn parse(
    pem: &[u8],
    what: &str,
) -> Result<(Vec<u8>, certfleet_common::model::CertRecord), ActError> {
    let der = certfleet_common::pem::first_certificate(pem)
        .map_err(|e| ActError(format!("{what}: {e}")))?;
    let rec =
        certfleet_common::x509::parse_der(&der).map_err(|e| ActError(format!("{what}: {e}")))?;
    Ok((der, rec))
}

fn read_cert(path: &Path) -> Result<(Vec<u8>, certfleet_common::model::CertRecord), ActError> {
    let pem = std::fs::read(path).map_err(|e| ActError(format!("{}: {e}", path.display())))?;
    parse(&pem, &path.display().to_string())
}

/// certool's config keys for a new root with `der`'s subject (`Name` = CN, `DomainComponent`
/// = the DC parts joined by dots, O, OU, ST, C, L), `Hostname` = the PNID. A subject without a
/// two-letter country gets `US`, as VMware's template does (certool needs one).
fn root_config(der: &[u8], pnid: &str) -> Result<String, ActError> {
    let (_, x) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| ActError(format!("the VMCA root's subject: {e}")))?;
    let mut keys: Vec<(&str, String)> = Vec::new();
    let mut dcs = Vec::new();
    for attr in x.subject().iter_attributes() {
        let Ok(v) = attr.as_str() else { continue };
        let oid = attr.attr_type().to_id_string();
        let key = match oid.as_str() {
            "2.5.4.3" => "Name",
            "0.9.2342.19200300.100.1.25" => {
                dcs.push(v.to_owned());
                continue;
            }
            "2.5.4.10" => "Organization",
            "2.5.4.11" => "OrgUnit",
            "2.5.4.8" => "State",
            "2.5.4.6" => "Country",
            "2.5.4.7" => "Locality",
            _ => continue,
        };
        if !keys.iter().any(|(k, _)| *k == key) {
            keys.push((key, v.to_owned()));
        }
    }
    if !keys.iter().any(|(k, v)| *k == "Country" && v.len() == 2) {
        keys.retain(|(k, _)| *k != "Country");
        keys.push(("Country", "US".into()));
    }
    if !keys.iter().any(|(k, _)| *k == "Name") {
        keys.push(("Name", "CA".into()));
    }
    if !dcs.is_empty() {
        keys.push(("DomainComponent", dcs.join(".")));
    }
    keys.push(("Hostname", pnid.to_owned()));
    let mut cfg = String::from("# certfleet: a new VMCA root with the old root's subject\n");
    for (k, v) in keys {
        if v.contains(['\n', '\r']) {
            return Err(ActError(format!(
                "the VMCA root's {k} holds a line break; certool's config cannot carry it"
            )));
        }
        cfg.push_str(&format!("{k} = {v}\n"));
    }
    Ok(cfg)
}

/// Checks a freshly generated root before VMCA is given it: a CA, valid now and for at least
/// a year, and `key` is its key.
fn check_new_root(ctx: &ActContext<'_>, crt: &Path, key: &Path) -> Result<String, ActError> {
    let (_, rec) = read_cert(crt)?;
    let t = certfleet_common::model::now();
    if !rec.is_ca {
        return Err(ActError(format!(
            "{}: certool --genselfcacert made a certificate that is not a CA",
            crt.display()
        )));
    }
    if rec.not_before > t + 300 || rec.not_after < t + MIN_NEW_ROOT_LIFE {
        return Err(ActError(format!(
            "{}: the new root is valid from {} to {}, not from now for years (is the clock \
             right?)",
            crt.display(),
            certfleet_common::model::format_time(rec.not_before),
            certfleet_common::model::format_time(rec.not_after)
        )));
    }
    crate::act::generic::key_matches(ctx, key, crt)?;
    Ok(rec.fingerprint_sha256)
}

/// Whether VECS `TRUSTED_ROOTS` holds a certificate with fingerprint `fp`.
fn trusted_root_holds(ctx: &ActContext<'_>, fp: &str) -> Result<bool, ActError> {
    let out = vecs(ctx, &["entry", "list", "--store", "TRUSTED_ROOTS"])?;
    for e in parse_entry_list(&out.stdout).entries {
        let Ok(der) = super::entry_cert(ctx, "TRUSTED_ROOTS", &e.alias) else {
            continue;
        };
        if certfleet_common::pki::sha256_hex(&der) == fp {
            return Ok(true);
        }
    }
    Ok(false)
}

/// `vsphere.vmca_root`.
///
/// Generates a new VMCA root with the old one's subject (`certool --genselfcacert`), checks it
/// (a CA, valid from now for years, the key its key), gives it to VMCA (`certool --rootca`),
/// then checks that VMCA signs with it (`certool --getrootca`), that `TRUSTED_ROOTS` holds it
/// after `vecs-cli force-refresh`, and refreshes the SSO server's copy
/// (`/etc/vmware-sso/keys/ssoserverRoot.crt`, where it exists, keeping owner and mode). The
/// root and key files and that copy are in an agent backup first; VMCA keeps its own copies
/// too (`root.cer.0`). The new key is removed from the work directory once VMCA holds it.
/// Nothing is undone on a failed check after `--rootca`: the old root had ended (or was
/// about to), and the failure says what to look at.
///
/// Idempotent by construction (resumed after an agent crash, see [`crate::act::intent`]):
/// the new certificate and key live in the step's work directory until VMCA holds them. A
/// resumed step whose work certificate is already the root VMCA holds goes straight to the
/// checks; one that finds the work pair but not in VMCA gives the same pair to `--rootca`
/// (never a second new root); only a step with no work pair generates one. The backup is
/// taken once, before the first change, and kept. The old root's fingerprint is noted in the
/// intent journal before anything changes, so the result names it on every attempt.
pub(super) fn vmca_root(ctx: &ActContext<'_>) -> Result<Value, ActError> {
    let dir = workdir(ctx)?;
    let root_path = ctx.cfg.host_path(VMCA_ROOT);
    let key_path = ctx.cfg.host_path(VMCA_KEY);
    let sso_copy = ctx.cfg.host_path(SSO_ROOT_COPY);
    let new_crt = dir.join("vmca-root.crt");
    let new_key = dir.join("vmca-root.key");
    let (current_der, current) = read_cert(&root_path)?;
    let current_fp = certfleet_common::pki::sha256_hex(&current_der);
    let work_fp = if new_crt.exists() {
        Some(read_cert(&new_crt)?.1.fingerprint_sha256)
    } else {
        None
    };
    let provisioned = work_fp.as_deref() == Some(current_fp.as_str());
    if !provisioned {
        ctx.note(
            "old_root",
            json!({"fingerprint": current_fp, "subject": current.subject, "not_after": current.not_after}),
        )?;
        let mut paths = vec![root_path.clone(), key_path.clone()];
        if sso_copy.exists() {
            paths.push(sso_copy.clone());
        }
        backup::create(ctx.state, ctx.step_id, &paths)?;
        if !(new_crt.exists() && new_key.exists()) {
            let pnid = super::pnid(ctx)?;
            let cfg = dir.join("vmca-root.cfg");
            certfleet_common::atomic::write_file(
                &cfg,
                root_config(&current_der, &pnid)?.as_bytes(),
                0o600,
            )
            .map_err(|e| ActError(format!("{}: {e}", cfg.display())))?;
            super::certool(
                ctx,
                &[
                    "--genselfcacert",
                    &format!("--outprivkey={}", s(&new_key)),
                    &format!("--outcert={}", s(&new_crt)),
                    &format!("--config={}", s(&cfg)),
                ],
            )?;
            ctx.crash_point("generated");
        } else {
            (ctx.output)(format!(
                "resuming: {} was generated by an earlier attempt and is not VMCA's root yet",
                new_crt.display()
            ));
        }
        check_new_root(ctx, &new_crt, &new_key)?;
        super::certool(
            ctx,
            &[
                "--rootca",
                &format!("--cert={}", s(&new_crt)),
                &format!("--privkey={}", s(&new_key)),
                "--server=localhost",
            ],
        )?;
        ctx.crash_point("provisioned");
    }
    let (new_der, new) = read_cert(&new_crt)?;
    let new_fp = certfleet_common::pki::sha256_hex(&new_der);
    let out = ctx.run_ok(
        &tool(ctx, "certool", CERTOOL),
        &["--getrootca", "--server=localhost"],
        None,
    )?;
    let (served, _) = parse(out.stdout.as_bytes(), "certool --getrootca")?;
    if certfleet_common::pki::sha256_hex(&served) != new_fp {
        return Err(ActError(format!(
            "certool --getrootca prints another root than {} after certool --rootca: VMCA did \
             not take the new root (look at /var/log/vmware/vmcad/)",
            new_crt.display()
        )));
    }
    vecs(ctx, &["force-refresh"])?;
    if !trusted_root_holds(ctx, &new_fp)? {
        return Err(ActError(format!(
            "VECS TRUSTED_ROOTS does not hold the new root after vecs-cli force-refresh; \
             publish it (dir-cli trustedcert publish --cert {} --login administrator@<domain>) \
             and run vecs-cli force-refresh",
            new_crt.display()
        )));
    }
    if sso_copy.exists() {
        let pem =
            std::fs::read(&new_crt).map_err(|e| ActError(format!("{}: {e}", new_crt.display())))?;
        let held = std::fs::read(&sso_copy).unwrap_or_default();
        if held != pem {
            backup::install(&sso_copy, &pem, 0o644, None)?;
        }
    }
    if new_key.exists() {
        std::fs::remove_file(&new_key)
            .map_err(|e| ActError(format!("removing {}: {e}", new_key.display())))?;
    }
    let old = ctx.noted("old_root").unwrap_or(Value::Null);
    (ctx.output)(format!(
        "VMCA signs with the new root {} (until {}); STS, Machine SSL and the solution users \
         must now be issued again from it, then every service restarted",
        new.subject,
        certfleet_common::model::format_time(new.not_after)
    ));
    Ok(json!({
        "message": "new VMCA root provisioned, published to TRUSTED_ROOTS",
        "fingerprint": new_fp,
        "subject": new.subject,
        "not_after": new.not_after,
        "old_root": old,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_keeps_the_old_roots_subject_and_names_the_pnid() {
        // A real VMCA root (integration-tests/fixtures/real/vsphere/, its README names the
        // source): CN=CA, DC=vsphere, DC=local, C=US, ST=California,
        // O=photon-machine.ragedomain, OU=VMware Engineering.
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(
            "../integration-tests/fixtures/real/vsphere/vmca-root_photon-machine_metasploit.pem",
        );
        let pem = std::fs::read(&p).unwrap();
        let der = certfleet_common::pem::first_certificate(&pem).unwrap();
        let cfg = root_config(&der, "photon-machine.ragedomain").unwrap();
        for line in [
            "Name = CA\n",
            "DomainComponent = vsphere.local\n",
            "Country = US\n",
            "State = California\n",
            "Organization = photon-machine.ragedomain\n",
            "OrgUnit = VMware Engineering\n",
            "Hostname = photon-machine.ragedomain\n",
        ] {
            assert!(cfg.contains(line), "{line:?} missing: {cfg}");
        }
    }

    #[test]
    fn a_subject_without_a_country_gets_certools_default() {
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::CommonName, "CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let der = p.self_signed(&key).unwrap().der().to_vec();
        let cfg = root_config(&der, "vc1.example.com").unwrap();
        assert!(cfg.contains("Country = US\n"), "{cfg}");
        assert!(!cfg.contains("DomainComponent"), "{cfg}");
    }
}

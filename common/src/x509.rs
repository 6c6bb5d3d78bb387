//! X.509 certificates parsed into the inventory model.
//!
//! One [`CertRecord`] per distinct certificate (keyed by SHA-256 of its DER). Where it was found
//! is a list of [`Location`]s, so the same certificate in a VECS store, a file and a TLS endpoint
//! is one certificate seen in three places.

use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::*;
use x509_parser::public_key::PublicKey;

use crate::model::CertRecord;

/// The bytes are not a certificate we can read.
#[derive(Debug, thiserror::Error)]
#[error("not a readable X.509 certificate: {0}")]
pub struct X509Error(pub String);

/// Parses one DER certificate. The role and locations are left empty for the caller.
pub fn parse_der(der: &[u8]) -> Result<CertRecord, X509Error> {
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| X509Error(e.to_string()))?;
    if !rest.is_empty() {
        return Err(X509Error(format!(
            "{} trailing bytes after the certificate",
            rest.len()
        )));
    }
    let der = &der[..der.len() - rest.len()];
    let mut sans = Vec::new();
    let mut ski = String::new();
    let mut aki = String::new();
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                for name in &san.general_names {
                    sans.push(match name {
                        GeneralName::DNSName(d) => format!("DNS:{d}"),
                        GeneralName::URI(u) => format!("URI:{u}"),
                        GeneralName::RFC822Name(m) => format!("email:{m}"),
                        GeneralName::IPAddress(ip) => format!("IP:{}", ip_string(ip)),
                        other => format!("{other}"),
                    });
                }
            }
            ParsedExtension::SubjectKeyIdentifier(k) => ski = hex::encode(k.0),
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                if let Some(k) = &a.key_identifier {
                    aki = hex::encode(k.0);
                }
            }
            _ => {}
        }
    }
    // A vector's first push reserves four slots; most certificates have one or two names, and
    // an agent holds thousands of these records.
    sans.shrink_to_fit();
    let (key_algorithm, key_bits) = key_info(&cert);
    Ok(CertRecord {
        fingerprint_sha256: crate::pki::sha256_hex(der),
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        serial: serial_hex(cert.raw_serial()),
        sans,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        key_algorithm,
        key_bits,
        is_ca: cert.is_ca(),
        subject_key_id: ski,
        authority_key_id: aki,
        role: String::new(),
        locations: Vec::new(),
        der: der.to_vec(),
    })
}

/// Serial as `openssl x509 -serial` prints it (`i2a_ASN1_INTEGER`): the integer's magnitude
/// in uppercase hex, two digits per byte, with a leading `-` for a negative serial (RFC 5280
/// forbids them, real CAs issued them anyway). `raw` is the INTEGER's DER content, two's
/// complement. Redundant sign bytes (DER's `00` padding and any non-minimal `00`/`FF` prefix,
/// which openssl refuses to load at all) are dropped; an empty integer prints as `00`.
pub fn serial_hex(raw: &[u8]) -> String {
    let negative = raw.first().is_some_and(|b| b & 0x80 != 0);
    if !negative {
        let mut bytes = raw;
        while bytes.len() > 1 && bytes[0] == 0 {
            bytes = &bytes[1..];
        }
        if bytes.is_empty() {
            return "00".into();
        }
        return hex::encode_upper(bytes);
    }
    // Magnitude of a negative two's-complement number: invert and add one.
    let mut magnitude: Vec<u8> = raw.iter().map(|b| !b).collect();
    for b in magnitude.iter_mut().rev() {
        let (sum, carry) = b.overflowing_add(1);
        *b = sum;
        if !carry {
            break;
        }
    }
    let first = magnitude.iter().position(|b| *b != 0).unwrap_or(0);
    format!("-{}", hex::encode_upper(&magnitude[first..]))
}

fn ip_string(bytes: &[u8]) -> String {
    match bytes.len() {
        4 => std::net::Ipv4Addr::from(<[u8; 4]>::try_from(bytes).unwrap()).to_string(),
        16 => std::net::Ipv6Addr::from(<[u8; 16]>::try_from(bytes).unwrap()).to_string(),
        _ => hex::encode(bytes),
    }
}

fn key_info(cert: &X509Certificate<'_>) -> (String, u32) {
    let spki = cert.public_key();
    match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) => ("RSA".into(), rsa.key_size() as u32),
        Ok(PublicKey::EC(point)) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|oid| match oid.to_id_string().as_str() {
                    "1.2.840.10045.3.1.7" => "P-256".to_owned(),
                    "1.3.132.0.34" => "P-384".to_owned(),
                    "1.3.132.0.35" => "P-521".to_owned(),
                    other => other.to_owned(),
                })
                .unwrap_or_default();
            (
                format!("EC {curve}").trim().to_owned(),
                point.key_size() as u32,
            )
        }
        Ok(PublicKey::DSA(_)) => ("DSA".into(), 0),
        Ok(_) => (spki.algorithm.algorithm.to_id_string(), 0),
        Err(_) => ("unknown".into(), 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_names_keys_and_ids() {
        let ca = crate::pki::generate_ca("unit CA", std::time::Duration::from_secs(86400)).unwrap();
        let der = crate::pem::first_certificate(ca.cert_pem.as_bytes()).unwrap();
        let rec = parse_der(&der).unwrap();
        assert!(rec.is_ca);
        assert_eq!(rec.key_algorithm, "EC P-256");
        assert_eq!(rec.key_bits, 256);
        assert!(rec.subject.contains("CN=unit CA"));
        assert_eq!(rec.subject, rec.issuer);
        assert_eq!(rec.fingerprint_sha256.len(), 64);
        assert!(rec.not_after - rec.not_before >= 86400);
    }

    #[test]
    fn serial_drops_der_sign_padding_like_openssl() {
        assert_eq!(serial_hex(&[0x00, 0xD0, 0x66]), "D066");
        assert_eq!(serial_hex(&[0x10, 0x00]), "1000");
        assert_eq!(serial_hex(&[0x00]), "00");
        assert_eq!(serial_hex(&[]), "00");
        // Non-minimal leading zeros (openssl refuses these; we print the value).
        assert_eq!(serial_hex(&[0x00, 0x00, 0x01]), "01");
    }

    #[test]
    fn negative_serials_print_like_openssl() {
        // Values and texts as `openssl x509 -serial` prints them (i2a_ASN1_INTEGER).
        assert_eq!(serial_hex(&[0xFF]), "-01");
        assert_eq!(serial_hex(&[0x80]), "-80");
        assert_eq!(serial_hex(&[0xFF, 0x7F]), "-81");
        assert_eq!(serial_hex(&[0xFF, 0x00]), "-0100");
        assert_eq!(serial_hex(&[0x80, 0x00]), "-8000");
        assert_eq!(serial_hex(&[0xFE, 0xDC, 0xBA]), "-012346");
    }

    #[test]
    fn truncated_der_is_an_error() {
        let ca = crate::pki::generate_ca("unit CA", std::time::Duration::from_secs(60)).unwrap();
        let der = crate::pem::first_certificate(ca.cert_pem.as_bytes()).unwrap();
        assert!(parse_der(&der[..der.len() / 2]).is_err());
    }

    /// Runs the real openssl in `dir`; panics with its stderr when it fails.
    fn openssl(dir: &std::path::Path, args: &[&str]) -> String {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl must be installed (packaging/deps.sh)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn serials_match_openssl_x509_serial() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        openssl(
            d,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                "k.pem",
            ],
        );
        for serial in [
            "-1",
            "0",
            "1",
            "-128",
            "-129",
            "-256",
            "128",
            "-32768",
            "-0x123456789abcdef0123456789abcdef0123456",
            "0x00ff00ff00ff00ff00ff00ff00ff00ff00ff00",
        ] {
            openssl(
                d,
                &[
                    "req",
                    "-x509",
                    "-new",
                    "-key",
                    "k.pem",
                    "-subj",
                    "/CN=serial",
                    "-days",
                    "1",
                    "-set_serial",
                    serial,
                    "-out",
                    "c.pem",
                ],
            );
            let want = openssl(d, &["x509", "-in", "c.pem", "-noout", "-serial"]);
            let want = want.trim().strip_prefix("serial=").unwrap();
            let pem = std::fs::read(d.join("c.pem")).unwrap();
            let rec = parse_der(&crate::pem::first_certificate(&pem).unwrap()).unwrap();
            assert_eq!(rec.serial, want, "serial {serial}");
        }
    }

    #[test]
    fn trusted_certificate_format_reads_like_openssl() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "k.pem",
                "-subj",
                "/CN=trusted root",
                "-days",
                "2",
                "-out",
                "c.pem",
            ],
        );
        // The format of RHEL's ca-bundle.trust.crt: certificate + trust settings + alias.
        openssl(
            d,
            &[
                "x509",
                "-in",
                "c.pem",
                "-addtrust",
                "serverAuth",
                "-addreject",
                "emailProtection",
                "-setalias",
                "Trusted Root",
                "-trustout",
                "-out",
                "t.pem",
            ],
        );
        let trusted = std::fs::read(d.join("t.pem")).unwrap();
        assert!(String::from_utf8_lossy(&trusted).contains("BEGIN TRUSTED CERTIFICATE"));
        let plain =
            crate::pem::first_certificate(&std::fs::read(d.join("c.pem")).unwrap()).unwrap();
        let der = crate::pem::first_certificate(&trusted).unwrap();
        assert_eq!(der, plain);
        let rec = parse_der(&der).unwrap();
        let fp = openssl(
            d,
            &["x509", "-in", "t.pem", "-noout", "-fingerprint", "-sha256"],
        );
        assert_eq!(
            rec.fingerprint_sha256,
            fp.trim()
                .rsplit('=')
                .next()
                .unwrap()
                .replace(':', "")
                .to_lowercase()
        );
    }

    /// The minimal two's-complement content octets of `n`, as DER writes an INTEGER.
    fn der_integer(n: i128) -> Vec<u8> {
        let bytes = n.to_be_bytes();
        let mut start = 0;
        while start < 15 {
            let (b, next) = (bytes[start], bytes[start + 1]);
            if (b == 0x00 && next & 0x80 == 0) || (b == 0xFF && next & 0x80 != 0) {
                start += 1;
            } else {
                break;
            }
        }
        bytes[start..].to_vec()
    }

    proptest! {
        /// Any integer prints as openssl prints it: sign, then its magnitude in whole bytes.
        #[test]
        fn serial_formatting_matches_the_integer(n in any::<i128>()) {
            let magnitude = n.unsigned_abs();
            let mut digits = format!("{magnitude:X}");
            if digits.len() % 2 == 1 {
                digits.insert(0, '0');
            }
            let want = if n < 0 { format!("-{digits}") } else { digits };
            prop_assert_eq!(serial_hex(&der_integer(n)), want);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
            let _ = parse_der(&bytes);
        }
    }
}

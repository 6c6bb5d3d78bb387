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

/// Serial as `openssl x509 -serial` prints it: the integer's magnitude bytes in uppercase hex
/// (DER's leading 0x00 sign padding removed).
pub fn serial_hex(raw: &[u8]) -> String {
    let mut bytes = raw;
    while bytes.len() > 1 && bytes[0] == 0 {
        bytes = &bytes[1..];
    }
    hex::encode_upper(bytes)
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
    }

    #[test]
    fn truncated_der_is_an_error() {
        let ca = crate::pki::generate_ca("unit CA", std::time::Duration::from_secs(60)).unwrap();
        let der = crate::pem::first_certificate(ca.cert_pem.as_bytes()).unwrap();
        assert!(parse_der(&der[..der.len() / 2]).is_err());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
            let _ = parse_der(&bytes);
        }
    }
}

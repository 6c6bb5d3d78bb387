//! The fleet's own PKI: the fleet CA, the controller's server certificate, agent and operator
//! client certificates.
//!
//! Everything is ECDSA P-256 made with rcgen. Keys are generated where they are used: agents
//! and operators send CSRs, and [`sign_client_csr`] issues a certificate for the CSR's public
//! key with the identity *we* choose (the SAN URI), ignoring whatever names the CSR asks for.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
    SerialNumber,
};

use crate::identity::Identity;

/// A PKI operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen refused to build, parse or sign.
    #[error("{what}: {source}")]
    Rcgen {
        /// What we were doing.
        what: &'static str,
        /// rcgen's reason.
        #[source]
        source: rcgen::Error,
    },
    /// A PEM block was missing or malformed.
    #[error("{0}")]
    Pem(String),
}

fn rc(what: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
    move |source| PkiError::Rcgen { what, source }
}

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct KeyedCert {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PEM (PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for KeyedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a private key, not even in a debug log.
        f.debug_struct("KeyedCert").field("cert_pem", &self.cert_pem).finish_non_exhaustive()
    }
}

fn offset(t: SystemTime) -> time::OffsetDateTime {
    let secs = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("system random number generator");
    bytes[0] &= 0x7f; // keep it a positive INTEGER
    SerialNumber::from_slice(&bytes)
}

/// Validity window starting a minute in the past (clock skew between hosts).
fn validity(params: &mut CertificateParams, ttl: Duration) {
    let now = SystemTime::now();
    params.not_before = offset(now - Duration::from_secs(60));
    params.not_after = offset(now + ttl);
}

/// Creates a new self-signed fleet CA.
pub fn generate_ca(common_name: &str, ttl: Duration) -> Result<KeyedCert, PkiError> {
    let key = KeyPair::generate().map_err(rc("generating the CA key"))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "certfleet");
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(random_serial());
    validity(&mut params, ttl);
    let cert = params.self_signed(&key).map_err(rc("self-signing the CA"))?;
    Ok(KeyedCert { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// The fleet CA, loaded and ready to sign.
pub struct FleetCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    fingerprint: String,
}

impl FleetCa {
    /// Loads a CA from its PEM certificate and key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem).map_err(rc("reading the CA key"))?;
        let issuer =
            Issuer::from_ca_cert_pem(cert_pem, key).map_err(rc("reading the CA certificate"))?;
        let der = crate::pem::first_certificate(cert_pem.as_bytes())
            .map_err(|e| PkiError::Pem(format!("CA certificate: {e}")))?;
        Ok(FleetCa { issuer, cert_pem: cert_pem.to_owned(), fingerprint: sha256_hex(&der) })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// SHA-256 of the CA certificate's DER, lowercase hex: the pin carried by join tokens.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Issues the controller's TLS server certificate for the given DNS names and IPs.
    pub fn issue_server(&self, sans: &[String], ttl: Duration) -> Result<KeyedCert, PkiError> {
        let key = KeyPair::generate().map_err(rc("generating the server key"))?;
        let mut params =
            CertificateParams::new(sans.to_vec()).map_err(rc("server certificate names"))?;
        params
            .subject_alt_names
            .push(SanType::URI(Identity::Controller.uri().try_into().map_err(rc("server URI"))?));
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, "certfleet controller");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(random_serial());
        validity(&mut params, ttl);
        let cert = params.signed_by(&key, &self.issuer).map_err(rc("signing the server certificate"))?;
        Ok(KeyedCert { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// Issues a client certificate for `identity` over the public key of `csr_pem`.
    ///
    /// The CSR's signature is verified (proof that the requester holds the key); its subject
    /// and requested extensions are ignored.
    pub fn sign_client_csr(
        &self,
        csr_pem: &str,
        identity: &Identity,
        common_name: &str,
        ttl: Duration,
    ) -> Result<String, PkiError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(rc("reading the certificate signing request"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.subject_alt_names =
            vec![SanType::URI(identity.uri().try_into().map_err(rc("identity URI"))?)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, ttl);
        let signed = CertificateSigningRequestParams { params, public_key: csr.public_key }
            .signed_by(&self.issuer)
            .map_err(rc("signing the client certificate"))?;
        Ok(signed.pem())
    }
}

/// Generates a key pair and a CSR for it; returns `(key_pem, csr_pem)`.
pub fn new_key_and_csr(common_name: &str) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate().map_err(rc("generating a key"))?;
    let csr = csr_for_key(&key.serialize_pem(), common_name)?;
    Ok((key.serialize_pem(), csr))
}

/// A CSR signed by an existing key (renewal and re-binding keep the enrolled key).
pub fn csr_for_key(key_pem: &str, common_name: &str) -> Result<String, PkiError> {
    let key = KeyPair::from_pem(key_pem).map_err(rc("reading the private key"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, common_name);
    let csr = params.serialize_request(&key).map_err(rc("building the CSR"))?;
    csr.pem().map_err(rc("encoding the CSR"))
}

/// The raw SubjectPublicKeyInfo bit string of a CSR (verified) or a certificate.
pub fn csr_public_key(csr_pem: &str) -> Result<Vec<u8>, PkiError> {
    let csr = CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(rc("reading the certificate signing request"))?;
    Ok(rcgen::PublicKeyData::der_bytes(&csr.public_key).to_vec())
}

/// SHA-256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
}

/// SHA-1 of `bytes`, lowercase hex (VECS TRUSTED_ROOTS aliases, vCenter thumbprints).
pub fn sha1_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x509::parse_der;

    #[test]
    fn client_certificate_carries_only_the_identity_we_chose() {
        let ca = generate_ca("test fleet", Duration::from_secs(3600)).unwrap();
        let ca = FleetCa::from_pem(&ca.cert_pem, &ca.key_pem).unwrap();
        let (_key, csr) = new_key_and_csr("evil-name").unwrap();
        let id = Identity::Agent("a1b2".into());
        let pem = ca.sign_client_csr(&csr, &id, "host-1", Duration::from_secs(600)).unwrap();
        let der = crate::pem::first_certificate(pem.as_bytes()).unwrap();
        let rec = parse_der(&der).unwrap();
        assert_eq!(rec.sans, vec![format!("URI:{}", id.uri())]);
        assert!(rec.subject.contains("host-1"));
        assert_eq!(crate::identity::identity_of_der(&der).unwrap(), id);
        let life = rec.not_after - rec.not_before;
        assert!((600..=700).contains(&life), "{life}");
    }

    #[test]
    fn tampered_csr_is_refused() {
        let (_key, csr) = new_key_and_csr("x").unwrap();
        let mut der = crate::pem::decode_all(csr.as_bytes()).unwrap().remove(0).1;
        let n = der.len();
        der[n - 5] ^= 0x55;
        let bad = crate::pem::encode("CERTIFICATE REQUEST", &der);
        assert!(csr_public_key(&bad).is_err());
    }
}

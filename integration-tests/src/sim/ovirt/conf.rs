//! The engine's OpenSSL configuration files, verbatim from oVirt `packaging/pki/`
//! (`shared/reference/ovirt_gke.md` A2). The simulated engine signs everything with the real
//! `openssl ca` reading exactly these files, so what ends up in `database.txt`, `serial.txt`
//! and the certificates is what a real engine would hold.

/// `/etc/pki/ovirt-engine/openssl.conf`.
pub const OPENSSL_CONF: &str = "RANDFILE = .rnd
unique_subject = no

[ca]

default_ca = CA_default

[CA_default]

certs = certs
crl_dir = crl
database = database.txt
new_certs_dir = certs

certificate = ca.pem
serial = serial.txt
crl = crl.pem
private_key = private/ca.pem
RANDFILE = private/private.rnd

default_days = 365
default_crl_days = 30
default_md = sha256
preserve = no

policy = policy_match

[policy_match]

countryName = optional
stateOrProvinceName = optional
organizationName = optional
organizationalUnitName = optional
commonName = optional
emailAddress = optional
";

/// `cacert.template.in` (no `@AIA@` in it, so `cacert.template`/`cacert.conf` and the qemu
/// copies are identical to it).
pub const CACERT_TEMPLATE_IN: &str = "RANDFILE = .rnd

[req]

default_bits = rsa:2048
default_keyfile = keys/ca.pem
distinguished_name = req_distinguished_name
attributes = req_attributes
x509_extensions = v3_ca

[req_attributes]

[v3_ca]

subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always,issuer:always
basicConstraints = critical,CA:true
keyUsage = critical,cRLSign,keyCertSign

[req_distinguished_name]
";

/// `cert.template.in`; `@AIA@` is replaced to make `cert.template`/`cert.conf`.
pub const CERT_TEMPLATE_IN: &str = "RANDFILE = .rnd

[req]

default_bits = rsa:2048
default_keyfile = keys/cert.pem
distinguished_name = req_distinguished_name
attributes = req_attributes
x509_extensions = v3_ca

[req_attributes]

[v3_ca]

# On updating this section, [v3_ca_san] may be updated, too.
subjectKeyIdentifier = hash
authorityInfoAccess = caIssuers;URI:@AIA@
authorityKeyIdentifier = keyid:always,issuer:always
basicConstraints = CA:false
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = critical,serverAuth,clientAuth

[v3_ca_san]

# This section is a copy of the section [v3_ca] extended by subjectAltName.
subjectKeyIdentifier = hash
authorityInfoAccess = caIssuers;URI:@AIA@
authorityKeyIdentifier = keyid:always,issuer:always
basicConstraints = CA:false
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = critical,serverAuth,clientAuth
subjectAltName = ${ENV::OVIRT_SAN}

[custom]
subjectKeyIdentifier = hash
authorityInfoAccess = caIssuers;URI:@AIA@
authorityKeyIdentifier = keyid:always,issuer:always
basicConstraints = CA:false
keyUsage = critical,${ENV::OVIRT_KU}
extendedKeyUsage = ${ENV::OVIRT_EKU}

[req_distinguished_name]
";

/// The AIA URL engine-setup substitutes for `@AIA@` (`resource` is `ca-certificate` or
/// `qemu-ca-certificate`).
pub fn aia(fqdn: &str, resource: &str) -> String {
    format!(
        "http://{fqdn}:80/ovirt-engine/services/pki-resource?resource={resource}&format=X509-PEM-CA"
    )
}

/// `cert.template.in` with the AIA filled in.
pub fn cert_conf(fqdn: &str, resource: &str) -> String {
    CERT_TEMPLATE_IN.replace("@AIA@", &aia(fqdn, resource))
}

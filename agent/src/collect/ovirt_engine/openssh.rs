//! OpenSSH certificates (`*-cert.pub`) of oVirt's serial console: the engine CA key signs them
//! with `ssh-keygen -s` (`pki-enroll-openssh-cert.sh`), for the vmconsole proxy
//! (`certs/vmconsole-proxy-{host,user}-cert.pub`, copied to
//! `/etc/pki/ovirt-vmconsole/proxy-ssh_{host,user}_rsa-cert.pub`) and for every host
//! (`certs/<fqdn>-ssh-cert.pub`, on the host `/etc/pki/ovirt-vmconsole/host-ssh_host_rsa-cert.pub`).
//! They expire like X.509 certificates and nothing else reports them.
//!
//! The wire format is OpenSSH's `PROTOCOL.certkeys`: after the key type and nonce come the
//! public key fields of that type, then serial, type (1 user, 2 host), key id, principals,
//! valid after, valid before, critical options, extensions, reserved, signature key,
//! signature. Only what an inventory needs is kept. A record's identity is the SHA-256 of the
//! certificate blob; its issuer is the signing key's OpenSSH fingerprint (`SHA256:…`, as
//! `ssh-keygen -l` prints it).

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use certfleet_common::model::CertRecord;

/// What went wrong reading an OpenSSH certificate.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SshCertError {
    /// Not `<type>-cert-v01@openssh.com <base64> [comment]`.
    #[error("not an OpenSSH certificate line")]
    NotACertificate,
    /// The base64 part does not decode.
    #[error("bad base64 in the certificate")]
    Base64,
    /// A field runs past the end of the blob.
    #[error("certificate truncated at {0}")]
    Truncated(&'static str),
    /// A key type this reader does not know.
    #[error("unsupported certificate key type {0:?}")]
    KeyType(String),
}

/// The fields of an OpenSSH certificate an inventory keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshCert {
    /// `ssh-rsa-cert-v01@openssh.com`, …
    pub key_type: String,
    /// Serial number.
    pub serial: u64,
    /// Host (true) or user certificate.
    pub host: bool,
    /// Key id (`-I`).
    pub key_id: String,
    /// Principals (`-n`).
    pub principals: Vec<String>,
    /// Valid after, Unix seconds.
    pub valid_after: u64,
    /// Valid before, Unix seconds (`u64::MAX`: forever).
    pub valid_before: u64,
    /// Bits of the certified RSA key (0 for other types).
    pub key_bits: u32,
    /// `SHA256:…` fingerprint of the CA key that signed it.
    pub signer: String,
    /// The decoded certificate blob.
    pub blob: Vec<u8>,
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes(&mut self, what: &'static str) -> Result<&'a [u8], SshCertError> {
        let len = self.u32(what)? as usize;
        if self.0.len() < len {
            return Err(SshCertError::Truncated(what));
        }
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(head)
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, SshCertError> {
        let (head, rest) = self
            .0
            .split_first_chunk::<4>()
            .ok_or(SshCertError::Truncated(what))?;
        self.0 = rest;
        Ok(u32::from_be_bytes(*head))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, SshCertError> {
        let (head, rest) = self
            .0
            .split_first_chunk::<8>()
            .ok_or(SshCertError::Truncated(what))?;
        self.0 = rest;
        Ok(u64::from_be_bytes(*head))
    }
    fn string(&mut self, what: &'static str) -> Result<String, SshCertError> {
        Ok(String::from_utf8_lossy(self.bytes(what)?).into_owned())
    }
}

/// Parses one `*-cert.pub` line.
pub fn parse(text: &str) -> Result<SshCert, SshCertError> {
    let mut parts = text.split_whitespace();
    let declared = parts.next().ok_or(SshCertError::NotACertificate)?;
    if !declared.ends_with("-cert-v01@openssh.com") {
        return Err(SshCertError::NotACertificate);
    }
    let b64 = parts.next().ok_or(SshCertError::NotACertificate)?;
    let blob = STANDARD.decode(b64).map_err(|_| SshCertError::Base64)?;
    let mut r = Reader(&blob);
    let key_type = r.string("key type")?;
    if key_type != declared {
        return Err(SshCertError::NotACertificate);
    }
    r.bytes("nonce")?;
    let mut key_bits = 0;
    match key_type.as_str() {
        "ssh-rsa-cert-v01@openssh.com" => {
            r.bytes("rsa e")?;
            let n = r.bytes("rsa n")?;
            let n = match n.iter().position(|b| *b != 0) {
                Some(i) => &n[i..],
                None => &[],
            };
            key_bits = n
                .first()
                .map(|b| (n.len() as u32 - 1) * 8 + (8 - b.leading_zeros()))
                .unwrap_or(0);
        }
        "ssh-ed25519-cert-v01@openssh.com" => {
            r.bytes("ed25519 key")?;
        }
        t if t.starts_with("ecdsa-sha2-") => {
            r.bytes("ecdsa curve")?;
            r.bytes("ecdsa point")?;
        }
        "ssh-dss-cert-v01@openssh.com" => {
            for f in ["dsa p", "dsa q", "dsa g", "dsa y"] {
                r.bytes(f)?;
            }
        }
        other => return Err(SshCertError::KeyType(other.to_owned())),
    }
    let serial = r.u64("serial")?;
    let host = r.u32("type")? == 2;
    let key_id = r.string("key id")?;
    let mut principals = Vec::new();
    let mut p = Reader(r.bytes("principals")?);
    while !p.0.is_empty() {
        principals.push(p.string("principal")?);
    }
    let valid_after = r.u64("valid after")?;
    let valid_before = r.u64("valid before")?;
    r.bytes("critical options")?;
    r.bytes("extensions")?;
    r.bytes("reserved")?;
    let signature_key = r.bytes("signature key")?;
    r.bytes("signature")?;
    let digest = ring::digest::digest(&ring::digest::SHA256, signature_key);
    Ok(SshCert {
        key_type,
        serial,
        host,
        key_id,
        principals,
        valid_after,
        valid_before,
        key_bits,
        signer: format!("SHA256:{}", STANDARD_NO_PAD.encode(digest.as_ref())),
        blob,
    })
}

impl SshCert {
    /// The inventory record (`role`; locations added by the caller). `der` stays empty: the
    /// blob is not X.509, and the fingerprint is the blob's SHA-256.
    pub fn record(&self, role: &str) -> CertRecord {
        let clamp = |t: u64| {
            i64::try_from(t)
                .unwrap_or(i64::MAX / 2)
                .min(253_402_300_799)
        };
        CertRecord {
            fingerprint_sha256: certfleet_common::pki::sha256_hex(&self.blob),
            subject: format!(
                "OpenSSH {} certificate, key id {}",
                if self.host { "host" } else { "user" },
                self.key_id
            ),
            issuer: format!("OpenSSH CA {}", self.signer),
            serial: format!("{:X}", self.serial),
            sans: self
                .principals
                .iter()
                .map(|p| format!("principal:{p}"))
                .collect(),
            not_before: clamp(self.valid_after),
            not_after: clamp(self.valid_before),
            key_algorithm: self
                .key_type
                .trim_end_matches("-cert-v01@openssh.com")
                .to_owned(),
            key_bits: self.key_bits,
            is_ca: false,
            subject_key_id: String::new(),
            authority_key_id: String::new(),
            role: role.to_owned(),
            locations: Vec::new(),
            der: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A host certificate made by the real `ssh-keygen -s`, as `pki-enroll-openssh-cert.sh`
    /// makes it (with a PEM RSA CA key like the engine's `private/ca.pem`).
    #[test]
    fn reads_what_ssh_keygen_signs() {
        let dir = tempfile::tempdir().unwrap();
        let run = |args: &[&str]| {
            let out = std::process::Command::new(args[0])
                .args(&args[1..])
                .current_dir(dir.path())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            out.stdout
        };
        run(&[
            "openssl",
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "ca",
        ]);
        std::fs::set_permissions(
            dir.path().join("ca"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        run(&[
            "ssh-keygen",
            "-q",
            "-t",
            "rsa",
            "-b",
            "2048",
            "-N",
            "",
            "-f",
            "host",
        ]);
        run(&[
            "ssh-keygen",
            "-s",
            "ca",
            "-P",
            "",
            "-I",
            "kvm01.example.test",
            "-h",
            "-z",
            "4100",
            "-V",
            "20250101000000Z:20300101000000Z",
            "-n",
            "kvm01.example.test",
            "host.pub",
        ]);
        let text = std::fs::read_to_string(dir.path().join("host-cert.pub")).unwrap();
        let c = parse(&text).unwrap();
        assert!(c.host);
        assert_eq!(c.serial, 4100);
        assert_eq!(c.key_id, "kvm01.example.test");
        assert_eq!(c.principals, ["kvm01.example.test"]);
        assert_eq!(c.valid_after, 1_735_689_600);
        assert_eq!(c.valid_before, 1_893_456_000);
        assert_eq!(c.key_bits, 2048);
        // The signer is the CA key's fingerprint as ssh-keygen prints it.
        let ca_pub = run(&["ssh-keygen", "-y", "-f", "ca"]);
        std::fs::write(dir.path().join("ca.pub"), ca_pub).unwrap();
        let l = String::from_utf8(run(&["ssh-keygen", "-l", "-f", "ca.pub"])).unwrap();
        assert!(l.contains(&c.signer), "{l} vs {}", c.signer);
        let rec = c.record("ovirt.node.vmconsole");
        assert_eq!(rec.not_after, 1_893_456_000);
        assert_eq!(rec.serial, "1004");
        // A plain public key is not a certificate.
        let plain = std::fs::read_to_string(dir.path().join("host.pub")).unwrap();
        assert_eq!(parse(&plain), Err(SshCertError::NotACertificate));
        // Truncations are errors, not panics.
        let b64 = text.split_whitespace().nth(1).unwrap();
        let blob = STANDARD.decode(b64).unwrap();
        for cut in [10, 100, blob.len() - 5] {
            let t = format!(
                "ssh-rsa-cert-v01@openssh.com {}",
                STANDARD.encode(&blob[..cut])
            );
            assert!(
                matches!(parse(&t), Err(SshCertError::Truncated(_))),
                "{cut}"
            );
        }
    }

    proptest! {
        #[test]
        fn never_panics(line in ".{0,200}", bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse(&line);
            let _ = parse(&format!("ssh-rsa-cert-v01@openssh.com {}", STANDARD.encode(&bytes)));
        }
    }
}

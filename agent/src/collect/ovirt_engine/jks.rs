//! Reading the certificates of a Java KeyStore (`JKS`), the format of the engine's
//! `.truststore` (reference A1: aliases `cacert` and `qemu-cacert`, password `mypass`).
//!
//! Only what inventory needs: trusted-certificate entries and the certificate chains of
//! private-key entries (the encrypted keys are skipped, never decrypted). The keyed SHA-1
//! integrity digest at the end is checked, so a wrong password is reported as such rather
//! than trusted. Every length is bounds-checked; malformed input is an error, never a panic.

use ring::digest;

const MAGIC: u32 = 0xFEED_FEED;

/// One certificate from the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JksCert {
    /// Entry alias.
    pub alias: String,
    /// Position in a key entry's chain (0 for trusted entries and chain leaves).
    pub index: usize,
    /// DER.
    pub der: Vec<u8>,
}

/// Why a keystore could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JksError {
    /// Not a JKS file.
    #[error("not a JKS keystore (bad magic)")]
    NotJks,
    /// Cut short or inconsistent.
    #[error("damaged JKS keystore: {0}")]
    Malformed(&'static str),
    /// The integrity digest does not match the password.
    #[error("JKS integrity check failed (wrong password or tampered keystore)")]
    BadPassword,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], JksError> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(JksError::Malformed("length overflow"))?;
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or(JksError::Malformed("truncated"))?;
        self.pos = end;
        Ok(s)
    }
    fn u16(&mut self) -> Result<u16, JksError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, JksError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn utf(&mut self) -> Result<String, JksError> {
        let n = self.u16()? as usize;
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }
    fn blob(&mut self) -> Result<&'a [u8], JksError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn cert(&mut self, version: u32) -> Result<Vec<u8>, JksError> {
        if version == 2 {
            let _cert_type = self.utf()?;
        }
        Ok(self.blob()?.to_vec())
    }
}

/// True if `bytes` start with the JKS magic.
pub fn is_jks(bytes: &[u8]) -> bool {
    bytes.len() >= 4 && u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) == MAGIC
}

/// Every certificate in a JKS keystore, after checking its digest with `password`.
pub fn certificates(bytes: &[u8], password: &str) -> Result<Vec<JksCert>, JksError> {
    if !is_jks(bytes) {
        return Err(JksError::NotJks);
    }
    if bytes.len() < 12 + 20 {
        return Err(JksError::Malformed("truncated"));
    }
    let (body, mac) = bytes.split_at(bytes.len() - 20);
    let mut ctx = digest::Context::new(&digest::SHA1_FOR_LEGACY_USE_ONLY);
    for unit in password.encode_utf16() {
        ctx.update(&unit.to_be_bytes());
    }
    ctx.update(b"Mighty Aphrodite");
    ctx.update(body);
    if ctx.finish().as_ref() != mac {
        return Err(JksError::BadPassword);
    }
    let mut r = Reader { buf: body, pos: 4 };
    let version = r.u32()?;
    if version != 1 && version != 2 {
        return Err(JksError::Malformed("unknown version"));
    }
    let count = r.u32()?;
    let mut out = Vec::new();
    for _ in 0..count {
        let tag = r.u32()?;
        let alias = r.utf()?;
        let _timestamp = r.take(8)?;
        match tag {
            1 => {
                let _protected_key = r.blob()?;
                let n = r.u32()?;
                for index in 0..n as usize {
                    out.push(JksCert {
                        alias: alias.clone(),
                        index,
                        der: r.cert(version)?,
                    });
                }
            }
            2 => out.push(JksCert {
                alias,
                index: 0,
                der: r.cert(version)?,
            }),
            _ => return Err(JksError::Malformed("unknown entry tag")),
        }
    }
    if r.pos != body.len() {
        return Err(JksError::Malformed("trailing bytes before the digest"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Builds a JKS image the way `sun.security.provider.JavaKeyStore` writes it.
    fn build(password: &str, entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(MAGIC.to_be_bytes());
        b.extend(2u32.to_be_bytes());
        b.extend((entries.len() as u32).to_be_bytes());
        for (alias, der) in entries {
            b.extend(2u32.to_be_bytes());
            b.extend((alias.len() as u16).to_be_bytes());
            b.extend(alias.as_bytes());
            b.extend(0u64.to_be_bytes());
            b.extend(5u16.to_be_bytes());
            b.extend(b"X.509");
            b.extend((der.len() as u32).to_be_bytes());
            b.extend(*der);
        }
        let mut ctx = digest::Context::new(&digest::SHA1_FOR_LEGACY_USE_ONLY);
        for unit in password.encode_utf16() {
            ctx.update(&unit.to_be_bytes());
        }
        ctx.update(b"Mighty Aphrodite");
        ctx.update(&b);
        b.extend(ctx.finish().as_ref());
        b
    }

    #[test]
    fn reads_trusted_entries_and_checks_the_password() {
        let img = build(
            "mypass",
            &[("cacert", b"\x30\x01"), ("qemu-cacert", b"\x30\x02")],
        );
        let certs = certificates(&img, "mypass").unwrap();
        assert_eq!(certs.len(), 2);
        assert_eq!(certs[1].alias, "qemu-cacert");
        assert_eq!(certs[1].der, b"\x30\x02");
        assert_eq!(certificates(&img, "changeit"), Err(JksError::BadPassword));
        assert_eq!(certificates(b"\x30\x82", "mypass"), Err(JksError::NotJks));
    }

    #[test]
    fn lying_lengths_are_errors() {
        let mut img = build("p", &[("a", b"\x30\x01")]);
        // Claim a huge certificate length; fix up the digest so parsing reaches it.
        let len_at = 12 + 4 + 2 + 1 + 8 + 2 + 5;
        img[len_at..len_at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        let body_len = img.len() - 20;
        let mut ctx = digest::Context::new(&digest::SHA1_FOR_LEGACY_USE_ONLY);
        ctx.update(&[0, b'p']);
        ctx.update(b"Mighty Aphrodite");
        ctx.update(&img[..body_len]);
        let mac = ctx.finish();
        img[body_len..].copy_from_slice(mac.as_ref());
        assert_eq!(
            certificates(&img, "p"),
            Err(JksError::Malformed("truncated"))
        );
    }

    proptest! {
        #[test]
        fn never_panics(mut bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if bytes.len() >= 4 {
                bytes[..4].copy_from_slice(&MAGIC.to_be_bytes());
            }
            let _ = certificates(&bytes, "mypass");
        }

        #[test]
        fn never_panics_past_the_digest(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut img = MAGIC.to_be_bytes().to_vec();
            img.extend(2u32.to_be_bytes());
            img.extend(body);
            let mut ctx = digest::Context::new(&digest::SHA1_FOR_LEGACY_USE_ONLY);
            ctx.update(&[0, b'p']);
            ctx.update(b"Mighty Aphrodite");
            ctx.update(&img);
            img.extend(ctx.finish().as_ref());
            let _ = certificates(&img, "p");
        }
    }
}

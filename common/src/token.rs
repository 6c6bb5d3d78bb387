//! Join tokens: `cfj1.<secret>.<ca-sha256>`.
//!
//! The secret is 32 random bytes (base64url); the controller keeps only its SHA-256. The CA
//! fingerprint lets the agent authenticate the controller on first contact without trusting
//! whatever certificate it is shown (no trust-on-first-use).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

const PREFIX: &str = "cfj1";

/// A parsed join token.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// The secret, as typed.
    pub secret: String,
    /// SHA-256 of the fleet CA certificate, lowercase hex.
    pub ca_fingerprint: String,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never log the secret.
        f.debug_struct("JoinToken")
            .field("ca_fingerprint", &self.ca_fingerprint)
            .finish_non_exhaustive()
    }
}

/// The token text is not a certfleet join token.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed join token: {0}")]
pub struct TokenError(pub &'static str);

impl JoinToken {
    /// A fresh token for the CA with this fingerprint.
    pub fn generate(ca_fingerprint: &str) -> Self {
        let mut bytes = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            .expect("system random number generator");
        JoinToken {
            secret: URL_SAFE_NO_PAD.encode(bytes),
            ca_fingerprint: ca_fingerprint.to_owned(),
        }
    }

    /// Parses the text form.
    pub fn parse(text: &str) -> Result<Self, TokenError> {
        let mut parts = text.trim().split('.');
        let (Some(p), Some(secret), Some(fp), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError("expected cfj1.<secret>.<ca-fingerprint>"));
        };
        if p != PREFIX {
            return Err(TokenError("unknown token version (expected cfj1)"));
        }
        match URL_SAFE_NO_PAD.decode(secret) {
            Ok(b) if b.len() == 32 => {}
            _ => return Err(TokenError("secret is not 32 bytes of base64url")),
        }
        if fp.len() != 64 || !fp.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(TokenError("CA fingerprint is not 64 hex digits"));
        }
        Ok(JoinToken {
            secret: secret.to_owned(),
            ca_fingerprint: fp.to_lowercase(),
        })
    }

    /// The text form.
    pub fn to_text(&self) -> String {
        format!("{PREFIX}.{}.{}", self.secret, self.ca_fingerprint)
    }

    /// What the controller stores.
    pub fn hash(&self) -> String {
        crate::pki::sha256_hex(self.secret.as_bytes())
    }

    /// Short id for listing and revoking.
    pub fn id(&self) -> String {
        self.hash()[..12].to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        let t = JoinToken::generate(&"ab".repeat(32));
        assert_eq!(JoinToken::parse(&t.to_text()).unwrap(), t);
        assert!(!format!("{t:?}").contains(&t.secret));
        assert!(JoinToken::parse("cfj1.abc.def").is_err());
        assert!(JoinToken::parse("").is_err());
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in ".*") { let _ = JoinToken::parse(&s); }
    }
}

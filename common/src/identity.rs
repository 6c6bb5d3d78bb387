//! Who is speaking: identities carried in certificate SAN URIs.
//!
//! The controller never trusts a name in a request body. The identity of a caller is the URI
//! SAN of its verified client certificate, one of `spiffe://certfleet/agent/<id>`,
//! `spiffe://certfleet/operator/<name>` or `spiffe://certfleet/controller`.

use x509_parser::extensions::GeneralName;

const PREFIX: &str = "spiffe://certfleet/";

/// A fleet principal.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Identity {
    /// An enrolled agent, by its controller-assigned id.
    Agent(String),
    /// An operator, by name (role is kept in the controller's store).
    Operator(String),
    /// The controller itself.
    Controller,
}

/// The certificate does not name a certfleet identity.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    /// No client certificate was presented.
    #[error("no client certificate presented")]
    NoCertificate,
    /// The certificate could not be parsed.
    #[error("unreadable client certificate: {0}")]
    Unparsable(String),
    /// The certificate has no certfleet URI SAN.
    #[error("client certificate names no certfleet identity (no spiffe://certfleet/ URI SAN)")]
    NoIdentity,
    /// The URI is malformed.
    #[error("malformed certfleet identity {0:?}")]
    Malformed(String),
}

impl Identity {
    /// The SAN URI for this identity.
    pub fn uri(&self) -> String {
        match self {
            Identity::Agent(id) => format!("{PREFIX}agent/{id}"),
            Identity::Operator(name) => format!("{PREFIX}operator/{name}"),
            Identity::Controller => format!("{PREFIX}controller"),
        }
    }

    /// Parses a SAN URI.
    pub fn parse(uri: &str) -> Result<Self, IdentityError> {
        let malformed = || IdentityError::Malformed(uri.to_owned());
        let rest = uri.strip_prefix(PREFIX).ok_or_else(malformed)?;
        if rest == "controller" {
            return Ok(Identity::Controller);
        }
        let (kind, name) = rest.split_once('/').ok_or_else(malformed)?;
        if !valid_name(name) {
            return Err(malformed());
        }
        match kind {
            "agent" => Ok(Identity::Agent(name.to_owned())),
            "operator" => Ok(Identity::Operator(name.to_owned())),
            _ => Err(malformed()),
        }
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::Agent(id) => write!(f, "agent:{id}"),
            Identity::Operator(n) => write!(f, "operator:{n}"),
            Identity::Controller => f.write_str("controller"),
        }
    }
}

/// Names usable in identities: what a hostname or login may contain.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.')
}

/// The certfleet identity of a DER certificate.
pub fn identity_of_der(der: &[u8]) -> Result<Identity, IdentityError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| IdentityError::Unparsable(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| IdentityError::Unparsable(e.to_string()))?
        .ok_or(IdentityError::NoIdentity)?;
    san.value
        .general_names
        .iter()
        .find_map(|n| match n {
            GeneralName::URI(u) if u.starts_with(PREFIX) => Some(Identity::parse(u)),
            _ => None,
        })
        .unwrap_or(Err(IdentityError::NoIdentity))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips() {
        for id in [Identity::Agent("abc-1".into()), Identity::Operator("alice".into()), Identity::Controller] {
            assert_eq!(Identity::parse(&id.uri()).unwrap(), id);
        }
        assert!(Identity::parse("spiffe://certfleet/agent/../x").is_err());
        assert!(Identity::parse("spiffe://other/agent/x").is_err());
        assert!(Identity::parse("spiffe://certfleet/agent/").is_err());
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in ".*") { let _ = Identity::parse(&s); }

        #[test]
        fn valid_names_round_trip(name in "[a-z0-9][a-z0-9._-]{0,40}") {
            let id = Identity::Agent(name.clone());
            prop_assert_eq!(Identity::parse(&id.uri()).unwrap(), id);
        }

        #[test]
        fn garbage_der_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = identity_of_der(&bytes);
        }
    }
}

//! PEM and DER input as operators meet it: files with one or many blocks, text around them,
//! DER with no armour at all.

/// Input that holds no usable certificate.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PemError {
    /// The PEM armour is broken (bad base64, unterminated block).
    #[error("malformed PEM: {0}")]
    Malformed(String),
    /// No block of the wanted kind was found.
    #[error("no {0} found")]
    Missing(&'static str),
}

/// Every PEM block in `input`, as `(label, der)`.
pub fn decode_all(input: &[u8]) -> Result<Vec<(String, Vec<u8>)>, PemError> {
    let blocks = pem::parse_many(input).map_err(|e| PemError::Malformed(e.to_string()))?;
    Ok(blocks.into_iter().map(|p| (p.tag().to_owned(), p.into_contents())).collect())
}

/// True if the bytes look like PEM armour rather than DER.
pub fn looks_like_pem(input: &[u8]) -> bool {
    input.windows(11).any(|w| w == b"-----BEGIN ")
}

/// All certificates in `input`, which may be PEM (one or several blocks) or a single DER
/// certificate.
pub fn certificates(input: &[u8]) -> Result<Vec<Vec<u8>>, PemError> {
    if looks_like_pem(input) {
        let certs: Vec<Vec<u8>> = decode_all(input)?
            .into_iter()
            .filter(|(label, _)| label == "CERTIFICATE" || label == "TRUSTED CERTIFICATE" || label == "X509 CERTIFICATE")
            .map(|(_, der)| der)
            .collect();
        if certs.is_empty() {
            return Err(PemError::Missing("CERTIFICATE block"));
        }
        Ok(certs)
    } else if input.first() == Some(&0x30) {
        Ok(vec![input.to_vec()])
    } else {
        Err(PemError::Missing("certificate (neither PEM nor DER)"))
    }
}

/// The first certificate in PEM `input`.
pub fn first_certificate(input: &[u8]) -> Result<Vec<u8>, PemError> {
    certificates(input)?.into_iter().next().ok_or(PemError::Missing("CERTIFICATE block"))
}

/// PEM-encodes one block.
pub fn encode(label: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(label, der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn finds_certificates_among_other_blocks() {
        let text = format!("junk\n{}{}", encode("PRIVATE KEY", b"k"), encode("CERTIFICATE", b"\x30c"));
        assert_eq!(certificates(text.as_bytes()).unwrap(), vec![b"\x30c".to_vec()]);
        let keyonly = encode("PRIVATE KEY", b"k");
        assert!(certificates(keyonly.as_bytes()).is_err());
    }

    #[test]
    fn truncated_pem_is_an_error() {
        let text = encode("CERTIFICATE", b"0123456789");
        let cut = &text.as_bytes()[..text.len() - 10];
        assert!(certificates(cut).is_err());
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = certificates(&bytes);
        }
    }
}

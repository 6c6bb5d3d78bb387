//! PEM and DER input as operators meet it: files with one or many blocks, text around them,
//! DER with no armour at all, and the OpenSSL variants found on real hosts.
//!
//! Files are read block by block: one broken block (bad base64, no END line, a mismatched END
//! label) is reported on its own, by its index in the file, and every other block is still
//! read. System CA bundles hold hundreds of blocks and one damaged entry must not hide them.
//! `-----BEGIN TRUSTED CERTIFICATE-----` (OpenSSL's trusted format, RHEL's
//! `ca-bundle.trust.crt`) holds the certificate followed by OpenSSL's trust settings
//! (`X509_CERT_AUX`); the certificate is read and the trust settings are ignored.

/// Input that holds no usable certificate.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PemError {
    /// The PEM armour is broken (bad base64, unterminated block).
    #[error("malformed PEM: {0}")]
    Malformed(String),
    /// No block of the wanted kind was found.
    #[error("no {0} found")]
    Missing(&'static str),
}

/// Labels whose blocks hold an X.509 certificate.
const CERTIFICATE_LABELS: &[&str] = &["CERTIFICATE", "TRUSTED CERTIFICATE", "X509 CERTIFICATE"];

/// One armoured block of a PEM file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// Position of the block in the file, counting from 0 (every `BEGIN` line counts, broken
    /// or not), so a problem can say which block of a bundle is damaged.
    pub index: usize,
    /// The label of the `BEGIN` line (`CERTIFICATE`, `PRIVATE KEY`, …).
    pub label: String,
    /// The decoded contents, or why they could not be decoded.
    pub contents: Result<Vec<u8>, PemError>,
}

/// Every `-----BEGIN …-----` block of `input`, in file order. Never fails as a whole: a broken
/// block carries its error and the blocks after it are still read.
pub fn blocks(input: &[u8]) -> Vec<Block> {
    const BEGIN: &[u8] = b"-----BEGIN ";
    const END: &[u8] = b"-----END ";
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some(start) = find(input, BEGIN, pos) {
        let index = out.len();
        let label_start = start + BEGIN.len();
        let line_end = find(input, b"\n", label_start).unwrap_or(input.len());
        let next_begin = find(input, BEGIN, label_start);
        let Some(label_end) = find(&input[..line_end], b"-----", label_start) else {
            out.push(Block {
                index,
                label: String::from_utf8_lossy(&input[label_start..line_end])
                    .trim()
                    .to_owned(),
                contents: Err(PemError::Malformed(format!(
                    "block #{index}: BEGIN line does not end with -----"
                ))),
            });
            pos = next_begin.unwrap_or(input.len());
            continue;
        };
        let label = String::from_utf8_lossy(&input[label_start..label_end]).into_owned();
        let end = find(input, END, label_end);
        let end = match (end, next_begin) {
            (Some(e), Some(n)) if n < e => None,
            (e, _) => e,
        };
        let Some(end) = end else {
            out.push(Block {
                index,
                contents: Err(PemError::Malformed(format!(
                    "block #{index} ({label}) has no END line"
                ))),
                label,
            });
            pos = next_begin.unwrap_or(input.len());
            continue;
        };
        // The END line runs to the next `-----` (or to the end of its line if that is missing;
        // pem then reports the block as broken).
        let end_line_end = find(input, b"\n", end + END.len()).unwrap_or(input.len());
        let block_end = find(&input[..end_line_end], b"-----", end + END.len())
            .map(|e| e + 5)
            .unwrap_or(end_line_end);
        let contents = match pem::parse(&input[start..block_end]) {
            Ok(p) => Ok(p.into_contents()),
            Err(e) => Err(PemError::Malformed(format!(
                "block #{index} ({label}): {e}"
            ))),
        };
        out.push(Block {
            index,
            label,
            contents,
        });
        pos = block_end.max(label_end);
    }
    out
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// Every PEM block in `input`, as `(label, der)`; the first broken block is an error.
pub fn decode_all(input: &[u8]) -> Result<Vec<(String, Vec<u8>)>, PemError> {
    blocks(input)
        .into_iter()
        .map(|b| b.contents.map(|c| (b.label, c)))
        .collect()
}

/// True if the bytes look like PEM armour rather than DER.
pub fn looks_like_pem(input: &[u8]) -> bool {
    input.windows(11).any(|w| w == b"-----BEGIN ")
}

/// A block that should have held a certificate but could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadBlock {
    /// Position of the block in the file (see [`Block::index`]).
    pub index: usize,
    /// Its label.
    pub label: String,
    /// Why it could not be read.
    pub error: PemError,
}

/// What a certificate file holds, read block by block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertificateScan {
    /// `(block index, DER)` of every readable certificate block (index 0 for a DER file).
    pub certificates: Vec<(usize, Vec<u8>)>,
    /// Blocks that could not be read. Blocks of other kinds (keys, parameters) are skipped
    /// silently when they decode.
    pub bad: Vec<BadBlock>,
}

/// Reads every certificate of `input`, which may be PEM (any number of blocks, text around
/// them) or one DER certificate, keeping going past broken blocks. Fails only when the input is
/// neither PEM nor DER.
pub fn scan_certificates(input: &[u8]) -> Result<CertificateScan, PemError> {
    if !looks_like_pem(input) {
        return if input.first() == Some(&0x30) {
            Ok(CertificateScan {
                certificates: vec![(0, input.to_vec())],
                bad: Vec::new(),
            })
        } else {
            Err(PemError::Missing("certificate (neither PEM nor DER)"))
        };
    }
    let mut scan = CertificateScan::default();
    for b in blocks(input) {
        match b.contents {
            Ok(der) if CERTIFICATE_LABELS.contains(&b.label.as_str()) => {
                match certificate_of(&b.label, der) {
                    Ok(der) => scan.certificates.push((b.index, der)),
                    Err(error) => scan.bad.push(BadBlock {
                        index: b.index,
                        label: b.label,
                        error,
                    }),
                }
            }
            Ok(_) => {}
            Err(error) => scan.bad.push(BadBlock {
                index: b.index,
                label: b.label,
                error,
            }),
        }
    }
    Ok(scan)
}

/// The certificate DER of a block: as is, except for `TRUSTED CERTIFICATE`, whose trailing
/// trust settings are cut off.
fn certificate_of(label: &str, der: Vec<u8>) -> Result<Vec<u8>, PemError> {
    if label != "TRUSTED CERTIFICATE" {
        return Ok(der);
    }
    match der_element_len(&der) {
        Some(n) => Ok(der[..n].to_vec()),
        None => Err(PemError::Malformed(
            "TRUSTED CERTIFICATE block does not start with a DER certificate".into(),
        )),
    }
}

/// Length of the DER SEQUENCE at the start of `der` (header included), if it fits.
pub fn der_element_len(der: &[u8]) -> Option<usize> {
    if der.first() != Some(&0x30) {
        return None;
    }
    let first = *der.get(1)?;
    let (len, header) = if first < 0x80 {
        (first as usize, 2)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 {
            return None;
        }
        let bytes = der.get(2..2 + n)?;
        let len = bytes.iter().fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (len, 2 + n)
    };
    let total = header.checked_add(len)?;
    (total <= der.len()).then_some(total)
}

/// All certificates in `input`, which may be PEM (one or several blocks) or a single DER
/// certificate. Strict: any broken block is an error (collectors use [`scan_certificates`]).
pub fn certificates(input: &[u8]) -> Result<Vec<Vec<u8>>, PemError> {
    let scan = scan_certificates(input)?;
    if let Some(bad) = scan.bad.into_iter().next() {
        return Err(bad.error);
    }
    if scan.certificates.is_empty() {
        return Err(PemError::Missing("CERTIFICATE block"));
    }
    Ok(scan.certificates.into_iter().map(|(_, der)| der).collect())
}

/// The first certificate in PEM `input`.
pub fn first_certificate(input: &[u8]) -> Result<Vec<u8>, PemError> {
    certificates(input)?
        .into_iter()
        .next()
        .ok_or(PemError::Missing("CERTIFICATE block"))
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
        let text = format!(
            "junk\n{}{}",
            encode("PRIVATE KEY", b"k"),
            encode("CERTIFICATE", b"\x30c")
        );
        assert_eq!(
            certificates(text.as_bytes()).unwrap(),
            vec![b"\x30c".to_vec()]
        );
        let keyonly = encode("PRIVATE KEY", b"k");
        assert!(certificates(keyonly.as_bytes()).is_err());
    }

    #[test]
    fn truncated_pem_is_an_error() {
        let text = encode("CERTIFICATE", b"0123456789");
        let cut = &text.as_bytes()[..text.len() - 10];
        assert!(certificates(cut).is_err());
    }

    #[test]
    fn one_bad_block_keeps_the_good_ones_and_names_its_index() {
        let good1 = encode("CERTIFICATE", b"\x30\x01a");
        let good2 = encode("CERTIFICATE", b"\x30\x01b");
        let bad_base64 = "-----BEGIN CERTIFICATE-----\nnot!base64@@\n-----END CERTIFICATE-----\n";
        let unterminated = "-----BEGIN CERTIFICATE-----\nMAFh\n";
        let text = format!("{good1}{bad_base64}{unterminated}{good2}");
        let scan = scan_certificates(text.as_bytes()).unwrap();
        assert_eq!(
            scan.certificates,
            vec![(0, b"\x30\x01a".to_vec()), (3, b"\x30\x01b".to_vec())]
        );
        assert_eq!(
            scan.bad.iter().map(|b| b.index).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert!(scan.bad[1].error.to_string().contains("no END line"));
        // The strict reader still refuses the file.
        assert!(certificates(text.as_bytes()).is_err());
    }

    #[test]
    fn mismatched_end_label_is_one_bad_block() {
        let text = format!(
            "-----BEGIN CERTIFICATE-----\nMAFh\n-----END PRIVATE KEY-----\n{}",
            encode("CERTIFICATE", b"\x30\x01b")
        );
        let scan = scan_certificates(text.as_bytes()).unwrap();
        assert_eq!(scan.certificates, vec![(1, b"\x30\x01b".to_vec())]);
        assert_eq!(scan.bad.len(), 1);
        assert_eq!(scan.bad[0].index, 0);
    }

    #[test]
    fn trusted_certificate_drops_the_trust_settings() {
        // SEQUENCE{1 byte} then OpenSSL's X509_CERT_AUX (here a stand-in SEQUENCE).
        let mut der = b"\x30\x01a".to_vec();
        der.extend(b"\x30\x03\x06\x01\x01");
        let text = encode("TRUSTED CERTIFICATE", &der);
        assert_eq!(
            certificates(text.as_bytes()).unwrap(),
            vec![b"\x30\x01a".to_vec()]
        );
        let broken = encode("TRUSTED CERTIFICATE", b"\x30\x09ab");
        assert!(scan_certificates(broken.as_bytes()).unwrap().bad.len() == 1);
    }

    #[test]
    fn der_lengths() {
        assert_eq!(der_element_len(b"\x30\x00"), Some(2));
        assert_eq!(der_element_len(b"\x30\x81\x01a"), Some(4));
        assert_eq!(der_element_len(b"\x30\x82\x00\x01ab"), Some(5));
        assert_eq!(der_element_len(b"\x30\x82\x00\x05ab"), None);
        assert_eq!(der_element_len(b"\x30\x85\x00\x00\x00\x00\x01a"), None);
        assert_eq!(der_element_len(b"\x31\x00"), None);
        assert_eq!(der_element_len(b""), None);
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = certificates(&bytes);
            let _ = blocks(&bytes);
        }

        /// encode → parse gives back every block, labels and contents, with any text between.
        #[test]
        fn encode_parse_round_trip(
            items in proptest::collection::vec(
                ("[A-Z][A-Z0-9 ]{0,20}[A-Z0-9]", proptest::collection::vec(any::<u8>(), 0..300)),
                0..6,
            ),
            junk in "[a-z \n]{0,40}",
        ) {
            let mut text = String::new();
            for (label, der) in &items {
                text.push_str(&junk);
                text.push_str(&encode(label, der));
            }
            let got: Vec<(String, Vec<u8>)> = decode_all(text.as_bytes()).unwrap();
            prop_assert_eq!(got, items.clone());
        }

        /// Damaging one block never loses another one.
        #[test]
        fn one_damaged_block_loses_nothing_else(
            ders in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..200), 1..6),
            damaged in any::<proptest::sample::Index>(),
        ) {
            let victim = damaged.index(ders.len());
            let mut text = String::new();
            for (i, der) in ders.iter().enumerate() {
                let mut block = encode("CERTIFICATE", der);
                if i == victim {
                    // Base64 that cannot decode.
                    block = block.replacen("-----\n", "-----\n!!!!\n", 1);
                }
                text.push_str(&block);
            }
            let scan = scan_certificates(text.as_bytes()).unwrap();
            let expected: Vec<(usize, Vec<u8>)> = ders
                .iter()
                .cloned()
                .enumerate()
                .filter(|(i, _)| *i != victim)
                .collect();
            prop_assert_eq!(scan.certificates, expected);
            prop_assert_eq!(scan.bad.len(), 1);
            prop_assert_eq!(scan.bad[0].index, victim);
        }
    }
}

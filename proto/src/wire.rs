//! `certfleet.v1.InventoryList` written by hand (`build.rs` maps the message here instead of
//! generating it): the same fields, plus items the controller has already encoded.
//!
//! An inventory answer is the largest message certfleet sends: 100,000 certificates at fleet
//! scale, 20 pages of 5,000. Built as messages, each item is some twenty strings copied out of
//! the controller's index, encoded, then freed: most of the controller's time for the answer.
//! [`InventoryList::encoded_items`] holds items written straight from the index as field 1
//! entries (see [`write_item`]); on the wire they are ordinary items, so every client decodes
//! them into [`InventoryList::items`] as before.

use prost::bytes::{Buf, BufMut};
use prost::encoding::{
    self, DecodeContext, WireType, encode_key, encode_varint, encoded_len_varint, message,
    skip_field, string,
};
use prost::{DecodeError, Message};

use crate::v1::{HealthFact, InventoryItem, Pin, Problem};

/// `certfleet.v1.InventoryList` (see the proto for the fields).
#[derive(Clone, PartialEq, Default, Debug)]
pub struct InventoryList {
    /// Field 1.
    pub items: Vec<InventoryItem>,
    /// Field 2 (first page only).
    pub problems: Vec<Problem>,
    /// Field 3 (first page only).
    pub health: Vec<HealthFact>,
    /// Field 4: empty on the last page.
    pub next_page_token: String,
    /// Field 5 (first page only).
    pub pins: Vec<Pin>,
    /// Field 6: the items are most urgent first.
    pub by_urgency: bool,
    /// More field 1 entries, already encoded (sent after `items`); never filled by decoding.
    pub encoded_items: Vec<u8>,
}

impl Message for InventoryList {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        for m in &self.items {
            message::encode(1, m, buf);
        }
        buf.put_slice(&self.encoded_items);
        for m in &self.problems {
            message::encode(2, m, buf);
        }
        for m in &self.health {
            message::encode(3, m, buf);
        }
        if !self.next_page_token.is_empty() {
            string::encode(4, &self.next_page_token, buf);
        }
        for m in &self.pins {
            message::encode(5, m, buf);
        }
        if self.by_urgency {
            encoding::bool::encode(6, &self.by_urgency, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        let field = |e: DecodeError, name: &'static str| {
            let mut e = e;
            e.push("InventoryList", name);
            e
        };
        match tag {
            1 => message::merge_repeated(wire_type, &mut self.items, buf, ctx)
                .map_err(|e| field(e, "items")),
            2 => message::merge_repeated(wire_type, &mut self.problems, buf, ctx)
                .map_err(|e| field(e, "problems")),
            3 => message::merge_repeated(wire_type, &mut self.health, buf, ctx)
                .map_err(|e| field(e, "health")),
            4 => string::merge(wire_type, &mut self.next_page_token, buf, ctx)
                .map_err(|e| field(e, "next_page_token")),
            5 => message::merge_repeated(wire_type, &mut self.pins, buf, ctx)
                .map_err(|e| field(e, "pins")),
            6 => encoding::bool::merge(wire_type, &mut self.by_urgency, buf, ctx)
                .map_err(|e| field(e, "by_urgency")),
            _ => skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        message::encoded_len_repeated(1, &self.items)
            + self.encoded_items.len()
            + message::encoded_len_repeated(2, &self.problems)
            + message::encoded_len_repeated(3, &self.health)
            + if self.next_page_token.is_empty() {
                0
            } else {
                string::encoded_len(4, &self.next_page_token)
            }
            + message::encoded_len_repeated(5, &self.pins)
            + if self.by_urgency {
                encoding::bool::encoded_len(6, &self.by_urgency)
            } else {
                0
            }
    }

    fn clear(&mut self) {
        *self = InventoryList::default();
    }
}

/// A certificate's fields as `CertificateRecord` has them (its `locations` stay empty in an
/// inventory item: places are listed per sighting).
pub struct CertificateFields<'a> {
    pub fingerprint_sha256: &'a str,
    pub subject: &'a str,
    pub issuer: &'a str,
    pub serial: &'a str,
    pub sans: &'a [Box<str>],
    pub not_before: i64,
    pub not_after: i64,
    pub key_algorithm: &'a str,
    pub key_bits: u32,
    pub is_ca: bool,
    pub subject_key_id: &'a str,
    pub authority_key_id: &'a str,
    pub role: &'a str,
    pub der: &'a [u8],
}

/// A place an item was seen, as `SeenAt` has it (its location always present).
pub struct SeenFields<'a> {
    pub agent_id: &'a str,
    pub agent_name: &'a str,
    pub hostname: &'a str,
    pub platforms: &'a [String],
    /// kind, path, store, alias, detail
    pub location: [&'a str; 5],
}

fn put_bytes(buf: &mut Vec<u8>, tag: u32, v: &[u8]) {
    if !v.is_empty() {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(v.len() as u64, buf);
        buf.put_slice(v);
    }
}

fn put_str(buf: &mut Vec<u8>, tag: u32, v: &str) {
    put_bytes(buf, tag, v.as_bytes());
}

fn put_varint(buf: &mut Vec<u8>, tag: u32, v: u64) {
    if v != 0 {
        encode_key(tag, WireType::Varint, buf);
        encode_varint(v, buf);
    }
}

/// A repeated string field: every value, empty ones too.
fn put_each<'v>(buf: &mut Vec<u8>, tag: u32, values: impl Iterator<Item = &'v str>) {
    for v in values {
        put_len(buf, tag, v.len());
        buf.put_slice(v.as_bytes());
    }
}

/// The key and length of a length-delimited field (its bytes follow).
fn put_len(buf: &mut Vec<u8>, tag: u32, len: usize) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
}

/// Bytes [`put_bytes`] writes for `len` bytes of value.
fn bytes_len(tag: u32, len: usize) -> usize {
    if len == 0 { 0 } else { nested_len(tag, len) }
}

/// Bytes [`put_varint`] writes.
fn varint_len(tag: u32, v: u64) -> usize {
    if v == 0 {
        0
    } else {
        encoding::key_len(tag) + encoded_len_varint(v)
    }
}

/// Bytes [`put_each`] writes.
fn each_len<'v>(tag: u32, values: impl Iterator<Item = &'v str>) -> usize {
    values.map(|v| nested_len(tag, v.len())).sum()
}

/// Bytes of a length-delimited field written even when empty (a nested message, a repeated
/// string): key, length, `len` bytes.
fn nested_len(tag: u32, len: usize) -> usize {
    encoding::key_len(tag) + encoded_len_varint(len as u64) + len
}

impl CertificateFields<'_> {
    fn encoded_len(&self) -> usize {
        bytes_len(1, self.fingerprint_sha256.len())
            + bytes_len(2, self.subject.len())
            + bytes_len(3, self.issuer.len())
            + bytes_len(4, self.serial.len())
            + each_len(5, self.sans.iter().map(|s| &**s))
            + varint_len(6, self.not_before as u64)
            + varint_len(7, self.not_after as u64)
            + bytes_len(8, self.key_algorithm.len())
            + varint_len(9, u64::from(self.key_bits))
            + varint_len(10, u64::from(self.is_ca))
            + bytes_len(11, self.subject_key_id.len())
            + bytes_len(12, self.authority_key_id.len())
            + bytes_len(13, self.role.len())
            + bytes_len(15, self.der.len())
    }

    fn encode(&self, buf: &mut Vec<u8>) {
        put_str(buf, 1, self.fingerprint_sha256);
        put_str(buf, 2, self.subject);
        put_str(buf, 3, self.issuer);
        put_str(buf, 4, self.serial);
        put_each(buf, 5, self.sans.iter().map(|s| &**s));
        // int64: negative values as their two's complement, ten bytes.
        put_varint(buf, 6, self.not_before as u64);
        put_varint(buf, 7, self.not_after as u64);
        put_str(buf, 8, self.key_algorithm);
        put_varint(buf, 9, u64::from(self.key_bits));
        put_varint(buf, 10, u64::from(self.is_ca));
        put_str(buf, 11, self.subject_key_id);
        put_str(buf, 12, self.authority_key_id);
        put_str(buf, 13, self.role);
        put_bytes(buf, 15, self.der);
    }
}

impl SeenFields<'_> {
    fn location_len(&self) -> usize {
        (1..)
            .zip(self.location)
            .map(|(tag, v)| bytes_len(tag, v.len()))
            .sum()
    }

    fn encoded_len(&self) -> usize {
        bytes_len(1, self.agent_id.len())
            + bytes_len(2, self.agent_name.len())
            + bytes_len(3, self.hostname.len())
            + each_len(4, self.platforms.iter().map(String::as_str))
            + nested_len(5, self.location_len())
    }

    fn encode(&self, buf: &mut Vec<u8>) {
        put_str(buf, 1, self.agent_id);
        put_str(buf, 2, self.agent_name);
        put_str(buf, 3, self.hostname);
        put_each(buf, 4, self.platforms.iter().map(String::as_str));
        put_len(buf, 5, self.location_len());
        for (tag, v) in (1..).zip(self.location) {
            put_str(buf, tag, v);
        }
    }
}

/// Appends one inventory item to `out` (an [`InventoryList::encoded_items`]) as an
/// `InventoryList` field 1 entry, field by field, the way prost encodes an `InventoryItem`
/// (proto3: empty strings, zeros and `false` are left out), without building the message.
/// Each nested message's length is computed before it is written, so every byte is written
/// once, straight into `out` (written into scratch buffers and copied out, each byte was
/// copied three times: a third of the controller's time for a listing was `memmove`).
pub fn write_item(
    out: &mut Vec<u8>,
    cert: &CertificateFields<'_>,
    seen: &[SeenFields<'_>],
    owner: &str,
) {
    let cert_len = cert.encoded_len();
    let item_len = nested_len(1, cert_len)
        + seen
            .iter()
            .map(|s| nested_len(2, s.encoded_len()))
            .sum::<usize>()
        + bytes_len(3, owner.len());
    out.reserve(nested_len(1, item_len));
    put_len(out, 1, item_len);
    let start = out.len();
    put_len(out, 1, cert_len);
    cert.encode(out);
    for s in seen {
        put_len(out, 2, s.encoded_len());
        s.encode(out);
    }
    put_str(out, 3, owner);
    debug_assert_eq!(out.len() - start, item_len, "an item's computed length");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{CertificateRecord, Location, SeenAt};

    fn item(not_before: i64, sans: &[&str], der: &[u8], seen: Vec<SeenAt>) -> InventoryItem {
        InventoryItem {
            certificate: Some(CertificateRecord {
                fingerprint_sha256: "ab".repeat(32),
                subject: "CN=vcsa-01.example.org".into(),
                issuer: "CN=CA, DC=vsphere, DC=local".into(),
                serial: "7e:00:01".into(),
                sans: sans.iter().map(|s| (*s).to_owned()).collect(),
                not_before,
                not_after: 1_900_000_000,
                key_algorithm: "RSA".into(),
                key_bits: 2048,
                is_ca: not_before < 0,
                subject_key_id: "01".repeat(20),
                authority_key_id: String::new(),
                role: "vsphere.machine_ssl".into(),
                locations: vec![],
                der: der.to_vec(),
            }),
            seen,
            owner: if der.is_empty() {
                String::new()
            } else {
                "platform:vcenter-auto-renew".into()
            },
        }
    }

    fn seen(path: &str, platforms: &[&str], store: &str) -> SeenAt {
        SeenAt {
            agent_id: "0f6c".into(),
            agent_name: "vcsa-01".into(),
            hostname: "vcsa-01.example.org".into(),
            platforms: platforms.iter().map(|s| (*s).to_owned()).collect(),
            location: Some(Location {
                kind: if path.is_empty() {
                    String::new()
                } else {
                    "vecs".into()
                },
                path: path.into(),
                store: store.into(),
                alias: String::new(),
                detail: String::new(),
            }),
        }
    }

    /// Writes `i` with the writer, as the controller does.
    fn written(i: &InventoryItem) -> Vec<u8> {
        let c = i.certificate.as_ref().unwrap();
        let sans: Vec<Box<str>> = c.sans.iter().map(|s| s.as_str().into()).collect();
        let mut out = Vec::new();
        let seen: Vec<SeenFields<'_>> = i
            .seen
            .iter()
            .map(|s| {
                let l = s.location.as_ref().unwrap();
                SeenFields {
                    agent_id: &s.agent_id,
                    agent_name: &s.agent_name,
                    hostname: &s.hostname,
                    platforms: &s.platforms,
                    location: [&l.kind, &l.path, &l.store, &l.alias, &l.detail],
                }
            })
            .collect();
        write_item(
            &mut out,
            &CertificateFields {
                fingerprint_sha256: &c.fingerprint_sha256,
                subject: &c.subject,
                issuer: &c.issuer,
                serial: &c.serial,
                sans: &sans,
                not_before: c.not_before,
                not_after: c.not_after,
                key_algorithm: &c.key_algorithm,
                key_bits: c.key_bits,
                is_ca: c.is_ca,
                subject_key_id: &c.subject_key_id,
                authority_key_id: &c.authority_key_id,
                role: &c.role,
                der: &c.der,
            },
            &seen,
            &i.owner,
        );
        out
    }

    /// The writer's bytes are prost's, byte for byte: negative times, empty and repeated
    /// strings, DER, no places, a place with an empty location, a long (multi-byte length)
    /// path.
    #[test]
    fn written_items_are_the_bytes_prost_encodes() {
        let long = "/etc/pki/".repeat(40);
        let cases = [
            item(1_700_000_000, &["vcsa-01.example.org"], &[], vec![]),
            item(
                -86_400,
                &["", "a"],
                &[0x30, 0x82, 0, 1],
                vec![seen("", &[], "")],
            ),
            item(
                0,
                &[],
                &[7; 300],
                vec![
                    seen(&long, &["vsphere", "ovirt"], "MACHINE_SSL_CERT"),
                    seen("x", &[""], ""),
                ],
            ),
        ];
        for i in &cases {
            let list = InventoryList {
                items: vec![i.clone()],
                ..Default::default()
            };
            let by_writer = InventoryList {
                encoded_items: written(i),
                ..Default::default()
            };
            assert_eq!(by_writer.encode_to_vec(), list.encode_to_vec(), "{i:?}");
            assert_eq!(by_writer.encoded_len(), list.encoded_len());
        }
    }

    /// Written items decode as ordinary items after the built ones, with the other fields.
    #[test]
    fn an_answer_with_written_items_decodes_as_one_list() {
        let a = item(1, &["a"], &[], vec![seen("/a", &[], "")]);
        let b = item(2, &["b"], &[1], vec![seen("/b", &["gke"], "S")]);
        let sent = InventoryList {
            items: vec![a.clone()],
            encoded_items: written(&b),
            problems: vec![Problem {
                subject: "vecs-cli".into(),
                message: "exit 1".into(),
                ..Default::default()
            }],
            next_page_token: "ff".into(),
            by_urgency: true,
            ..Default::default()
        };
        let bytes = sent.encode_to_vec();
        assert_eq!(bytes.len(), sent.encoded_len());
        let got = InventoryList::decode(bytes.as_slice()).unwrap();
        assert_eq!(got.items, vec![a, b]);
        assert!(got.encoded_items.is_empty());
        assert_eq!(
            (
                got.problems.len(),
                got.next_page_token.as_str(),
                got.by_urgency
            ),
            (1, "ff", true)
        );
        // Garbage is an error naming the message, not a panic.
        let e = InventoryList::decode(&[0x0a, 0x05, 0x01][..]).unwrap_err();
        assert!(e.to_string().contains("InventoryList"), "{e}");
    }
}

//! `certfleet.v1.InventoryList` written by hand (`build.rs` maps the message here instead of
//! generating it): the same fields, plus items the controller has already encoded.
//!
//! An inventory answer is the largest message certfleet sends: 100,000 certificates at fleet
//! scale, 20 pages of 5,000. Built as messages, each item is some twenty strings copied out of
//! the controller's index, encoded, then freed: most of the controller's time for the answer.
//! [`InventoryList::encoded_items`] holds items written straight from the index as field 1
//! entries (see [`ItemWriter`]); on the wire they are ordinary items, so every client decodes
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
    }

    fn clear(&mut self) {
        *self = InventoryList::default();
    }
}

/// Writes inventory items as `InventoryList` field 1 entries, field by field, the way prost
/// encodes an `InventoryItem` (proto3: empty strings, zeros and `false` are left out), without
/// building the message. Two scratch buffers are reused for the nested lengths.
#[derive(Default)]
pub struct ItemWriter {
    item: Vec<u8>,
    part: Vec<u8>,
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
        put_message(buf, tag, v.as_bytes());
    }
}

/// A nested message: its key, its length, its bytes (even when empty).
fn put_message(buf: &mut Vec<u8>, tag: u32, m: &[u8]) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(m.len() as u64, buf);
    buf.put_slice(m);
}

impl ItemWriter {
    /// Appends one item to `out` (an [`InventoryList::encoded_items`]).
    pub fn write<'s>(
        &mut self,
        out: &mut Vec<u8>,
        cert: &CertificateFields<'_>,
        seen: impl IntoIterator<Item = SeenFields<'s>>,
        owner: &str,
    ) {
        let (item, part) = (&mut self.item, &mut self.part);
        item.clear();
        part.clear();
        put_str(part, 1, cert.fingerprint_sha256);
        put_str(part, 2, cert.subject);
        put_str(part, 3, cert.issuer);
        put_str(part, 4, cert.serial);
        put_each(part, 5, cert.sans.iter().map(|s| &**s));
        // int64: negative values as their two's complement, ten bytes.
        put_varint(part, 6, cert.not_before as u64);
        put_varint(part, 7, cert.not_after as u64);
        put_str(part, 8, cert.key_algorithm);
        put_varint(part, 9, u64::from(cert.key_bits));
        put_varint(part, 10, u64::from(cert.is_ca));
        put_str(part, 11, cert.subject_key_id);
        put_str(part, 12, cert.authority_key_id);
        put_str(part, 13, cert.role);
        put_bytes(part, 15, cert.der);
        put_message(item, 1, part);
        for s in seen {
            part.clear();
            put_str(part, 1, s.agent_id);
            put_str(part, 2, s.agent_name);
            put_str(part, 3, s.hostname);
            put_each(part, 4, s.platforms.iter().map(String::as_str));
            // The location, nested once more: its length is known before it is written.
            let loc_len: usize = s
                .location
                .iter()
                .enumerate()
                .filter(|(_, v)| !v.is_empty())
                .map(|(n, v)| {
                    encoding::key_len(n as u32 + 1) + encoded_len_varint(v.len() as u64) + v.len()
                })
                .sum();
            encode_key(5, WireType::LengthDelimited, part);
            encode_varint(loc_len as u64, part);
            for (n, v) in s.location.iter().enumerate() {
                put_str(part, n as u32 + 1, v);
            }
            put_message(item, 2, part);
        }
        put_str(item, 3, owner);
        put_message(out, 1, item);
    }
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
        ItemWriter::default().write(
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
            i.seen.iter().map(|s| {
                let l = s.location.as_ref().unwrap();
                SeenFields {
                    agent_id: &s.agent_id,
                    agent_name: &s.agent_name,
                    hostname: &s.hostname,
                    platforms: &s.platforms,
                    location: [&l.kind, &l.path, &l.store, &l.alias, &l.detail],
                }
            }),
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
            ..Default::default()
        };
        let got = InventoryList::decode(sent.encode_to_vec().as_slice()).unwrap();
        assert_eq!(got.items, vec![a, b]);
        assert!(got.encoded_items.is_empty());
        assert_eq!(
            (got.problems.len(), got.next_page_token.as_str()),
            (1, "ff")
        );
        // Garbage is an error naming the message, not a panic.
        let e = InventoryList::decode(&[0x0a, 0x05, 0x01][..]).unwrap_err();
        assert!(e.to_string().contains("InventoryList"), "{e}");
    }
}

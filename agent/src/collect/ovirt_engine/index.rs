//! The `openssl ca` index the engine CA keeps as `database.txt` (reference A1, A3).
//!
//! One line per issued certificate, tab-separated: status (`V` valid, `R` revoked, `E` expired
//! as marked by `openssl ca -updatedb`), expiry (`YYMMDDHHMMSSZ` or `YYYYMMDDHHMMSSZ`),
//! revocation date (`date[,reason]`, empty unless revoked), serial in hex, file name (always
//! `unknown` on an engine), subject in OpenSSL's slash form. A bad line is reported with its
//! number and skipped; parsing never panics.

/// One issued certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// `V`, `R` or `E`.
    pub status: char,
    /// Expiry, Unix seconds.
    pub expires: i64,
    /// Revocation time, Unix seconds, for `R` entries.
    pub revoked: Option<i64>,
    /// Serial, uppercase hex without leading zeros beyond what openssl writes.
    pub serial: String,
    /// Subject as written (`/O=example.test/CN=host1.example.test`).
    pub subject: String,
}

impl IndexEntry {
    /// The value of the last `attr=` component of the subject (`CN`, `OU`, …).
    pub fn attr(&self, attr: &str) -> Option<&str> {
        self.subject
            .split('/')
            .filter_map(|c| c.split_once('='))
            .filter(|(k, _)| *k == attr)
            .map(|(_, v)| v)
            .next_back()
    }

    /// Whether the subject has a country: the engine's own certificates and CAs do, host
    /// certificates (`/O=org/CN=host`) do not (A1 "Who signs what").
    pub fn is_host(&self) -> bool {
        self.attr("C").is_none() && self.attr("CN").is_some()
    }
}

/// A line that is not an index entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadLine {
    /// 1-based line number.
    pub line: usize,
    /// Why.
    pub reason: String,
}

/// Parses `database.txt`; returns the entries and the lines that could not be read.
pub fn parse(text: &str) -> (Vec<IndexEntry>, Vec<BadLine>) {
    let mut entries = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(line) {
            Ok(e) => entries.push(e),
            Err(reason) => bad.push(BadLine {
                line: i + 1,
                reason,
            }),
        }
    }
    (entries, bad)
}

fn parse_line(line: &str) -> Result<IndexEntry, String> {
    let f: Vec<&str> = line.split('\t').collect();
    if f.len() != 6 {
        return Err(format!("{} tab-separated fields, expected 6", f.len()));
    }
    let status = match f[0] {
        "V" => 'V',
        "R" => 'R',
        "E" => 'E',
        other => return Err(format!("unknown status {other:?}")),
    };
    let expires = asn1_time(f[1]).ok_or_else(|| format!("bad expiry {:?}", f[1]))?;
    let revoked = match (status, f[2]) {
        ('R', r) => Some(
            asn1_time(r.split(',').next().unwrap_or(""))
                .ok_or_else(|| format!("bad revocation date {r:?}"))?,
        ),
        (_, "") => None,
        (_, r) => return Err(format!("revocation date {r:?} on a non-revoked entry")),
    };
    let serial = f[3];
    if serial.is_empty() || !serial.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("bad serial {serial:?}"));
    }
    Ok(IndexEntry {
        status,
        expires,
        revoked,
        serial: serial.to_ascii_uppercase(),
        subject: f[5].to_owned(),
    })
}

/// `YYMMDDHHMMSSZ` (UTCTime, 50–99 = 19xx) or `YYYYMMDDHHMMSSZ` to Unix seconds.
pub fn asn1_time(s: &str) -> Option<i64> {
    let digits = s.strip_suffix('Z')?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (year, rest) = match digits.len() {
        12 => {
            let yy: i32 = digits[..2].parse().ok()?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &digits[2..])
        }
        14 => (digits[..4].parse().ok()?, &digits[4..]),
        _ => return None,
    };
    let n = |i: usize| rest[i..i + 2].parse::<u8>().ok();
    let month = time::Month::try_from(n(0)?).ok()?;
    let date = time::Date::from_calendar_date(year, month, n(2)?).ok()?;
    let t = time::Time::from_hms(n(4)?, n(6)?, n(8)?).ok()?;
    Some(
        time::PrimitiveDateTime::new(date, t)
            .assume_utc()
            .unix_timestamp(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_the_reference_fixture() {
        let text = "V\t310118175821Z\t\t1003\tunknown\t/C=US/O=example.com/CN=engine.example.com\n\
                    V\t270624120816Z\t\t100A\tunknown\t/O=example.com/CN=kvm01.example.com\n\
                    R\t270624120816Z\t260101000000Z,keyCompromise\t100b\tunknown\t/O=example.com/CN=kvm02\n";
        let (e, bad) = parse(text);
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].serial, "1003");
        assert_eq!(e[0].expires, 1_926_525_501);
        assert!(!e[0].is_host());
        assert!(e[1].is_host());
        assert_eq!(e[1].attr("CN"), Some("kvm01.example.com"));
        assert_eq!(e[2].status, 'R');
        assert_eq!(e[2].serial, "100B");
        assert_eq!(e[2].revoked, Some(1_767_225_600));
    }

    #[test]
    fn bad_lines_are_numbered_and_skipped() {
        let (e, bad) = parse(
            "garbage\nV\t99\t\t10\tunknown\t/CN=x\n\nV\t20500101000000Z\t\t10\tunknown\t/CN=x\n",
        );
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].expires, 2_524_608_000);
        assert_eq!(bad.iter().map(|b| b.line).collect::<Vec<_>>(), vec![1, 2]);
    }

    #[test]
    fn utctime_pivot() {
        assert_eq!(asn1_time("700101000000Z"), Some(0));
        assert_eq!(asn1_time("491231235959Z"), Some(2_524_607_999));
        assert_eq!(asn1_time("701301000000Z"), None);
        assert_eq!(asn1_time("7001010000Z"), None);
    }

    proptest! {
        #[test]
        fn never_panics(text in "\\PC{0,400}") {
            let _ = parse(&text);
        }

        #[test]
        fn never_panics_on_tabbed_lines(fields in proptest::collection::vec("[VRE0-9A-Za-z,/=Z]{0,16}", 0..8)) {
            let _ = parse(&fields.join("\t"));
        }
    }
}

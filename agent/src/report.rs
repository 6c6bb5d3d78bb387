//! `certfleet-agent scan` output: a JSON object for scripts, a table for people at 3 a.m.

use certfleet_common::model::{CertRecord, HealthFact, Problem, format_time};
use certfleet_common::roles::{self, Status};
use comfy_table::{Cell, Color, ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use serde::Serialize;

use crate::collect::{Collection, Wire};

/// One certificate in `scan -o json`.
#[derive(Serialize)]
pub struct CertView<'a> {
    #[serde(flatten)]
    record: &'a CertRecord,
    status: &'static str,
    days_left: i64,
    warn_days: u32,
    impact: &'static str,
    recipe: &'static str,
}

/// The `scan -o json` document.
#[derive(Serialize)]
pub struct ScanReport<'a> {
    platforms: &'a [String],
    certificates: Views<'a>,
    problems: &'a [Problem],
    health: &'a [HealthFact],
}

/// The certificates of `scan -o json`, in order, each decoded and made into its [`CertView`]
/// only as it is written: the collection's encoded records are never all decoded at once.
pub struct Views<'a> {
    records: Vec<&'a Wire>,
    now: i64,
}

impl Serialize for Views<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq as _;
        let mut seq = s.serialize_seq(Some(self.records.len()))?;
        for w in &self.records {
            seq.serialize_element(&view(&w.record(), self.now))?;
        }
        seq.end()
    }
}

/// The collection's records sorted by urgency: expired first, then by not-after (the
/// fingerprint breaks ties). Each record is decoded once for its key; only the keys are kept.
pub fn by_urgency(c: &Collection, now: i64) -> Vec<&Wire> {
    let mut keyed: Vec<(Status, i64, String, &Wire)> = c
        .wire()
        .map(|w| {
            let r = w.message();
            (
                Status::of(&r.role, r.not_after, now),
                r.not_after,
                r.fingerprint_sha256,
                w,
            )
        })
        .collect();
    keyed.sort_by(|a, b| (a.0, a.1, &a.2).cmp(&(b.0, b.1, &b.2)));
    keyed.into_iter().map(|(_, _, _, w)| w).collect()
}

fn view(c: &CertRecord, now: i64) -> CertView<'_> {
    let info = roles::lookup(&c.role);
    CertView {
        record: c,
        status: Status::of(&c.role, c.not_after, now).as_str(),
        days_left: days_left(c.not_after, now),
        warn_days: info.warn_days,
        impact: info.impact,
        recipe: info.recipe,
    }
}

/// Whole days left (negative once expired).
pub fn days_left(not_after: i64, now: i64) -> i64 {
    (not_after - now).div_euclid(86_400)
}

/// Writes the JSON report to `out`, streamed (a 10,000-certificate scan never builds the whole
/// document in memory).
pub fn write_json(c: &Collection, now: i64, out: impl std::io::Write) -> std::io::Result<()> {
    let report = ScanReport {
        platforms: &c.platforms,
        certificates: Views {
            records: by_urgency(c, now),
            now,
        },
        problems: &c.problems,
        health: &c.health,
    };
    let mut out = std::io::BufWriter::new(out);
    serde_json::to_writer_pretty(&mut out, &report)?;
    std::io::Write::write_all(&mut out, b"\n")?;
    std::io::Write::flush(&mut out)
}

/// JSON report as a string.
pub fn json(c: &Collection, now: i64) -> String {
    let mut buf = Vec::new();
    write_json(c, now, &mut buf).expect("writing to memory");
    String::from_utf8(buf).expect("JSON is UTF-8")
}

/// Coloured cell for days left.
pub fn days_cell(role: &str, not_after: i64, now: i64) -> Cell {
    let d = days_left(not_after, now);
    let cell = Cell::new(if d < 0 {
        format!("EXPIRED {}d ago", -d)
    } else {
        format!("{d}")
    });
    match Status::of(role, not_after, now) {
        Status::Expired => cell.fg(Color::Red),
        Status::Expiring => cell.fg(Color::Yellow),
        Status::Ok => cell.fg(Color::Green),
    }
}

/// Table for people; fits the terminal width.
pub fn table(c: &Collection, now: i64) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(vec!["DAYS LEFT", "NOT AFTER", "ROLE", "SUBJECT", "WHERE"]);
    for w in by_urgency(c, now) {
        let r = w.record();
        let wher = r
            .locations
            .iter()
            .map(|l| l.describe())
            .collect::<Vec<_>>()
            .join("\n");
        t.add_row(vec![
            days_cell(&r.role, r.not_after, now),
            Cell::new(format_time(r.not_after)),
            Cell::new(&r.role),
            Cell::new(&r.subject),
            Cell::new(wher),
        ]);
    }
    let mut s = t.to_string();
    s.push('\n');
    for h in c.health.iter().filter(|h| !h.healthy) {
        s.push_str(&format!(
            "HEALTH {} {}: {} ({})\n",
            h.kind, h.subject, h.state, h.detail
        ));
    }
    for p in &c.problems {
        s.push_str(&format!(
            "PROBLEM [{}] {}: {}\n",
            p.collector, p.subject, p.message
        ));
    }
    s.push_str(&format!(
        "{} certificates, {} problems; platforms: {}\n",
        c.len(),
        c.problems.len(),
        if c.platforms.is_empty() {
            "none detected".to_owned()
        } else {
            c.platforms.join(", ")
        }
    ));
    s
}

//! `certfleet-agent scan` output: a JSON object for scripts, a table for people at 3 a.m.

use certfleet_common::model::{CertRecord, HealthFact, Problem, format_time};
use certfleet_common::roles::{self, Status};
use comfy_table::{Cell, Color, ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use serde::Serialize;

use crate::collect::Collection;

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

/// The certificates of `scan -o json`, in order, each made into its [`CertView`] only as it is
/// written.
pub struct Views<'a> {
    records: Vec<&'a CertRecord>,
    now: i64,
}

impl Serialize for Views<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.records.iter().map(|r| view(r, self.now)))
    }
}

/// Sorted by urgency: expired first, then by not-after.
pub fn by_urgency<'a>(
    certs: impl Iterator<Item = &'a CertRecord>,
    now: i64,
) -> Vec<&'a CertRecord> {
    let mut v: Vec<&CertRecord> = certs.collect();
    // Keys borrowed, not cloned: sort_by_key made two fingerprint copies per comparison.
    let key = |c: &'a CertRecord| {
        (
            Status::of(&c.role, c.not_after, now),
            c.not_after,
            c.fingerprint_sha256.as_str(),
        )
    };
    v.sort_by(|a, b| key(a).cmp(&key(b)));
    v
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
            records: by_urgency(c.certificates(), now),
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
    for r in by_urgency(c.certificates(), now) {
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

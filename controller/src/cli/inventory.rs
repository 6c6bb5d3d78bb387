//! `certfleet inventory`: the fleet's certificates, most urgent first, one line per place a
//! certificate was found; `inventory show` for one certificate with its chain and what it
//! signs; `inventory --compare` against an earlier `-o json`; `inventory rescan`.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use certfleet_common::model::{Location, format_time, now};
use certfleet_common::proto as pb;
use certfleet_common::roles::{self, Status as Urgency};
use clap::{Args, Subcommand};
use serde::Serialize;

use super::args::{MAX_HORIZON, duration_in, secs};
use super::conn::Conn;
use super::output::{
    Cell, Column, Format, OutputArgs, Screen, Show, Tone, print_document, render_list,
    render_list_on, shorten, write_json_with, write_outcome,
};

/// `certfleet inventory [...]`
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct InventoryArgs {
    #[command(subcommand)]
    sub: Option<InventoryCmd>,
    /// Only certificates expiring within this duration (e.g. 90d).
    #[arg(long, value_parser = duration_in(secs(1), MAX_HORIZON))]
    expiring_within: Option<Duration>,
    /// Only this platform (vsphere, ovirt, gke, kubeadm, kubernetes, any).
    #[arg(long)]
    platform: Option<String>,
    /// Only this role (or role prefix, e.g. vsphere.solution_user).
    #[arg(long)]
    role: Option<String>,
    /// Only what this agent (id or name) reported.
    #[arg(long)]
    agent: Option<String>,
    /// Only certificates issued by the CA with this fingerprint.
    #[arg(long)]
    issued_by: Option<String>,
    #[command(flatten)]
    output: OutputArgs,
    /// Compare with an earlier `inventory -o json` saved to this file: what changed where.
    #[arg(long)]
    compare: Option<PathBuf>,
}

/// `certfleet inventory show|rescan`
#[derive(Subcommand)]
pub enum InventoryCmd {
    /// One certificate: where it is, its chain, what it signs.
    #[command(after_help = "Example:\n  certfleet inventory show 3f9a0c1e7b2d")]
    Show {
        /// SHA-256 fingerprint, or an unambiguous prefix of it.
        fingerprint: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Every CA in the fleet: the leaves it caps and its cliff (the date from which new leaves
    /// can no longer get a full lifetime). Table, or JSON with `-o json`.
    #[command(
        after_help = "Example:\n  certfleet inventory cas\n  certfleet inventory cas -o json"
    )]
    Cas {
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Ask agents (all connected, or one) to rescan now.
    #[command(after_help = "Example:\n  certfleet inventory rescan vcsa-01")]
    Rescan {
        /// Agent id or name (default: every connected agent).
        agent: Option<String>,
    },
}

/// Runs an `inventory` command.
pub async fn run(conn: &Conn, args: &InventoryArgs) -> anyhow::Result<()> {
    let mut c = conn.client();
    let e = |s| conn.explain(s);
    match &args.sub {
        Some(InventoryCmd::Rescan { agent }) => {
            let r = c
                .rescan(pb::IdRequest {
                    id: agent.clone().unwrap_or_default(),
                })
                .await
                .map_err(e)?
                .into_inner();
            eprintln!("rescan requested from {} agent(s)", r.agents);
        }
        Some(InventoryCmd::Cas { output }) => {
            // Paged like every listing: one answer of the whole inventory grows with the fleet.
            let all = inventory_pages(&mut c, pb::InventoryQuery::default())
                .await
                .map_err(e)?;
            let facts = crate::cas::facts_from_list(&all);
            crate::cas::print(
                &crate::cas::forecast(&facts, certfleet_common::model::now()),
                matches!(output.output, super::output::Format::Json),
            );
        }
        Some(InventoryCmd::Show {
            fingerprint,
            output,
        }) => {
            let all = inventory_pages(&mut c, pb::InventoryQuery::default())
                .await
                .map_err(e)?;
            print_certificate(fingerprint, &all, output)?;
        }
        None => {
            let q = pb::InventoryQuery {
                expiring_within_secs: args.expiring_within.map(|d| d.as_secs()).unwrap_or(0),
                platform: args.platform.clone().unwrap_or_default(),
                role: args.role.clone().unwrap_or_default(),
                agent: args.agent.clone().unwrap_or_default(),
                issued_by: args.issued_by.clone().unwrap_or_default(),
                ..Default::default()
            };
            match &args.compare {
                Some(before) => {
                    let list = inventory_pages(&mut c, q).await.map_err(e)?;
                    print_comparison(before, &list, &args.output)?
                }
                None if args.output.output == Format::Json => {
                    print_inventory_json(conn, q, &args.output, now()).await?
                }
                None => {
                    let listing = inventory_listing(&c, q, now()).await.map_err(e)?;
                    print_inventory(listing, &args.output)?
                }
            }
        }
    }
    Ok(())
}

/// A place a certificate was found at, as printed.
#[derive(Serialize)]
pub struct SeenView {
    agent_id: String,
    agent: String,
    hostname: String,
    #[serde(flatten)]
    location: Location,
}

/// A certificate of the inventory as printed (`-o json` is an array of these).
#[derive(Serialize)]
pub struct InventoryView {
    fingerprint_sha256: String,
    subject: String,
    issuer: String,
    serial: String,
    sans: Vec<String>,
    not_before: String,
    not_after: String,
    /// `not_after` as seconds (the sort key).
    #[serde(skip)]
    not_after_ts: i64,
    days_left: i64,
    status: &'static str,
    key_algorithm: String,
    key_bits: u32,
    is_ca: bool,
    role: String,
    platform: &'static str,
    impact: &'static str,
    recipe: &'static str,
    subject_key_id: String,
    authority_key_id: String,
    /// Who renews it: `certfleet`, `platform:<renewer>`, `unknown-renewer`, or `-`.
    owner: String,
    locations: Vec<SeenView>,
    /// What pins it (reported by the agents; empty when nothing is known to).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pins: Vec<PinView>,
}

/// Pretty JSON written by hand for the views of `inventory -o json`, byte for byte what
/// serde_json's pretty printer makes of them (`views_json_is_serde_json_s` checks every field
/// and every kind of string): 100,000 certificates are 100 MB of it, and serde_json's
/// byte-by-byte string scan and per-key calls were two fifths of the command's CPU. Strings
/// that need escaping, rare in certificates, are still escaped by serde_json.
mod pretty {
    /// A new line indented for `depth`.
    pub fn line(out: &mut Vec<u8>, depth: usize) {
        out.push(b'\n');
        out.resize(out.len() + 2 * depth, b' ');
    }

    pub fn string(out: &mut Vec<u8>, s: &str) {
        // Not `any`: a fold without an early exit is vectorized.
        let escapes = s
            .as_bytes()
            .iter()
            .fold(false, |e, &b| e | (b < 0x20) | (b == b'"') | (b == b'\\'));
        if escapes {
            serde_json::to_writer(&mut *out, s).expect("a string serializes");
        } else {
            out.push(b'"');
            out.extend_from_slice(s.as_bytes());
            out.push(b'"');
        }
    }

    pub fn int(out: &mut Vec<u8>, v: impl itoa::Integer) {
        out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
    }

    /// An object's key at `depth` (a `,` before every key but the first).
    pub fn key(out: &mut Vec<u8>, depth: usize, first: &mut bool, name: &str) {
        if !std::mem::take(first) {
            out.push(b',');
        }
        line(out, depth);
        out.push(b'"');
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\": ");
    }

    /// An array at `depth`, each element written by `element` at `depth + 1`.
    pub fn array<T>(
        out: &mut Vec<u8>,
        depth: usize,
        items: &[T],
        mut element: impl FnMut(&mut Vec<u8>, &T),
    ) {
        if items.is_empty() {
            out.extend_from_slice(b"[]");
            return;
        }
        out.push(b'[');
        for (n, item) in items.iter().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            line(out, depth + 1);
            element(out, item);
        }
        line(out, depth);
        out.push(b']');
    }

    /// An object at `depth` of string fields (`None`: left out).
    pub fn object(out: &mut Vec<u8>, depth: usize, fields: &[(&str, Option<&str>)]) {
        out.push(b'{');
        let mut first = true;
        for (name, value) in fields {
            if let Some(v) = value {
                key(out, depth + 1, &mut first, name);
                string(out, v);
            }
        }
        line(out, depth);
        out.push(b'}');
    }
}

impl InventoryView {
    /// The view as serde_json's pretty printer writes it at `depth` (see [`pretty`]).
    fn write_pretty(&self, out: &mut Vec<u8>, depth: usize) {
        use pretty::{array, int, key, line, object, string};
        let d = depth + 1;
        let mut first = true;
        out.push(b'{');
        for (name, v) in [
            ("fingerprint_sha256", &self.fingerprint_sha256),
            ("subject", &self.subject),
            ("issuer", &self.issuer),
            ("serial", &self.serial),
        ] {
            key(out, d, &mut first, name);
            string(out, v);
        }
        key(out, d, &mut first, "sans");
        array(out, d, &self.sans, |out, s| string(out, s));
        key(out, d, &mut first, "not_before");
        string(out, &self.not_before);
        key(out, d, &mut first, "not_after");
        string(out, &self.not_after);
        key(out, d, &mut first, "days_left");
        int(out, self.days_left);
        key(out, d, &mut first, "status");
        string(out, self.status);
        key(out, d, &mut first, "key_algorithm");
        string(out, &self.key_algorithm);
        key(out, d, &mut first, "key_bits");
        int(out, self.key_bits);
        key(out, d, &mut first, "is_ca");
        out.extend_from_slice(if self.is_ca { b"true" } else { b"false" });
        for (name, v) in [
            ("role", self.role.as_str()),
            ("platform", self.platform),
            ("impact", self.impact),
            ("recipe", self.recipe),
            ("subject_key_id", &self.subject_key_id),
            ("authority_key_id", &self.authority_key_id),
            ("owner", &self.owner),
        ] {
            key(out, d, &mut first, name);
            string(out, v);
        }
        key(out, d, &mut first, "locations");
        array(out, d, &self.locations, |out, s| {
            let l = &s.location;
            object(
                out,
                d + 1,
                &[
                    ("agent_id", Some(&s.agent_id)),
                    ("agent", Some(&s.agent)),
                    ("hostname", Some(&s.hostname)),
                    ("kind", Some(&l.kind)),
                    ("path", non_empty(&l.path)),
                    ("store", non_empty(&l.store)),
                    ("alias", non_empty(&l.alias)),
                    ("detail", non_empty(&l.detail)),
                ],
            );
        });
        if !self.pins.is_empty() {
            key(out, d, &mut first, "pins");
            array(out, d, &self.pins, |out, p| {
                object(
                    out,
                    d + 1,
                    &[
                        ("agent", Some(&p.agent)),
                        ("source", Some(&p.source)),
                        ("name", Some(&p.name)),
                        ("state", Some(&p.state)),
                        ("pinned", Some(&p.pinned)),
                        ("retrust", Some(&p.retrust)),
                        ("detail", Some(&p.detail)),
                    ],
                );
            });
        }
        line(out, depth);
        out.push(b'}');
    }
}

/// A field serde leaves out when empty (`skip_serializing_if = "String::is_empty"`).
fn non_empty(v: &str) -> Option<&str> {
    (!v.is_empty()).then_some(v)
}

/// `chunk` as `serde_json::to_vec_pretty` writes it (see [`pretty`]).
fn views_json(chunk: &[&InventoryView]) -> Vec<u8> {
    let mut out = Vec::with_capacity(chunk.len() * 1024);
    pretty::array(&mut out, 0, chunk, |out, v| v.write_pretty(out, 1));
    out
}

/// Something that pins a certificate, as printed.
#[derive(Serialize)]
pub struct PinView {
    agent: String,
    source: String,
    name: String,
    /// `match`, `stale` or `unknown`.
    state: String,
    pinned: String,
    retrust: String,
    detail: String,
}

/// The pins of the certificate `fingerprint` in `list`.
fn pins_of(list: &pb::InventoryList, fingerprint: &str) -> Vec<PinView> {
    let mine = list
        .pins
        .iter()
        .filter(|p| p.cert_fingerprint == fingerprint)
        .cloned()
        .collect();
    pins_by_fingerprint(mine)
        .remove(fingerprint)
        .unwrap_or_default()
}

/// Pins grouped by the certificate they pin (each group sorted by agent, source and name);
/// pins of no known certificate are left out.
fn pins_by_fingerprint(pins: Vec<pb::Pin>) -> HashMap<String, Vec<PinView>> {
    let mut by: HashMap<String, Vec<PinView>> = HashMap::new();
    for p in pins {
        if p.cert_fingerprint.is_empty() {
            continue;
        }
        by.entry(p.cert_fingerprint).or_default().push(PinView {
            agent: p.agent,
            source: p.source,
            name: p.name,
            state: p.state,
            pinned: p.pinned,
            retrust: p.retrust,
            detail: p.detail,
        });
    }
    for v in by.values_mut() {
        v.sort_by(|a, b| (&a.agent, &a.source, &a.name).cmp(&(&b.agent, &b.source, &b.name)));
    }
    by
}

fn pins_cell(v: &InventoryView) -> Cell {
    let stale = v.pins.iter().filter(|p| p.state == "stale").count();
    match (v.pins.len(), stale) {
        (0, _) => Cell::plain(""),
        (n, 0) => Cell::toned(n.to_string(), Tone::Good),
        (n, s) => Cell::toned(format!("{n} ({s} stale)"), Tone::Bad),
    }
}

fn inventory_view(i: &pb::InventoryItem, now: i64) -> InventoryView {
    into_view(i.clone(), now)
}

/// The printed form of an item, moving its strings (a fleet's listing has 100,000 of them).
fn into_view(i: pb::InventoryItem, now: i64) -> InventoryView {
    let c = i.certificate.unwrap_or_default();
    let info = roles::lookup(&c.role);
    InventoryView {
        days_left: (c.not_after - now).div_euclid(86_400),
        status: Urgency::of(&c.role, c.not_after, now).as_str(),
        not_after_ts: c.not_after,
        fingerprint_sha256: c.fingerprint_sha256,
        subject: c.subject,
        issuer: c.issuer,
        serial: c.serial,
        sans: c.sans,
        not_before: format_time(c.not_before),
        not_after: format_time(c.not_after),
        key_algorithm: c.key_algorithm,
        key_bits: c.key_bits,
        is_ca: c.is_ca,
        platform: info.platform,
        impact: info.impact,
        recipe: info.recipe,
        role: c.role,
        subject_key_id: c.subject_key_id,
        authority_key_id: c.authority_key_id,
        owner: if i.owner.is_empty() {
            "-".to_owned()
        } else {
            i.owner
        },
        locations: i
            .seen
            .into_iter()
            .map(|s| SeenView {
                agent_id: s.agent_id,
                agent: s.agent_name,
                hostname: s.hostname,
                location: s.location.unwrap_or_default().into(),
            })
            .collect(),
        pins: Vec::new(),
    }
}

/// A listing's certificates as printed, each with its pins, built page by page.
#[derive(Default)]
struct Listing {
    views: Vec<InventoryView>,
    /// The answer's pins by the certificate they pin (they come with the first page).
    pins: HashMap<String, Vec<PinView>>,
    health: Vec<pb::HealthFact>,
    problems: Vec<pb::Problem>,
}

impl Listing {
    /// A whole answer.
    #[cfg(test)]
    fn new(list: pb::InventoryList, now: i64) -> Listing {
        let mut listing = Listing::default();
        listing.add(list, now);
        listing.attach_pins();
        listing
    }

    /// Adds a page of the answer.
    fn add(&mut self, page: pb::InventoryList, now: i64) {
        self.pins.extend(pins_by_fingerprint(page.pins));
        self.health.extend(page.health);
        self.problems.extend(page.problems);
        self.views
            .extend(page.items.into_iter().map(|i| into_view(i, now)));
    }

    /// Puts each pin on its certificate, once every page is in (pages come in any order, the
    /// pins with the first).
    fn attach_pins(&mut self) {
        if self.pins.is_empty() {
            return;
        }
        for v in &mut self.views {
            if let Some(pins) = self.pins.remove(&v.fingerprint_sha256) {
                v.pins = pins;
            }
        }
    }

    /// Most urgent first: expired, then expiring, then the rest, each by expiry (the
    /// fingerprint breaks ties, so the order is total).
    fn sorted(&self) -> Vec<&InventoryView> {
        let rank = |s: &str| match s {
            "expired" => 0u8,
            "expiring" => 1,
            _ => 2,
        };
        // The keys sit next to each other; a view (some 500 bytes, anywhere in memory) is
        // read only to break a tie.
        let mut keyed: Vec<(u8, i64, &InventoryView)> = self
            .views
            .iter()
            .map(|v| (rank(v.status), v.not_after_ts, v))
            .collect();
        keyed.sort_unstable_by(|a, b| {
            (a.0, a.1)
                .cmp(&(b.0, b.1))
                .then_with(|| a.2.fingerprint_sha256.cmp(&b.2.fingerprint_sha256))
        });
        keyed.into_iter().map(|(_, _, v)| v).collect()
    }
}

fn days_cell(v: &InventoryView) -> Cell {
    // "expired" rather than a negative count: the word survives a pipe without colour.
    let text = if v.days_left < 0 {
        "expired".to_owned()
    } else {
        v.days_left.to_string()
    };
    Cell::toned(
        text,
        match v.status {
            "expired" => Tone::Bad,
            "expiring" => Tone::Warn,
            _ => Tone::Good,
        },
    )
}

/// One line of the inventory table: a certificate at one place.
pub struct PlaceRow<'a> {
    cert: &'a InventoryView,
    seen: &'a SeenView,
}

fn inventory_columns<'a>() -> Vec<Column<PlaceRow<'a>>> {
    vec![
        Column::new("FINGERPRINT", "fingerprint_sha256", |r: &PlaceRow<'_>| {
            Cell::plain(&r.cert.fingerprint_sha256)
        })
        .only(Show::Wide),
        Column::new("STATUS", "status", |r: &PlaceRow<'_>| {
            Cell::plain(r.cert.status)
        })
        .only(Show::Wide),
        Column::new("DAYS LEFT", "days_left", |r: &PlaceRow<'_>| {
            days_cell(r.cert)
        })
        .only(Show::Screen),
        Column::new("DAYS LEFT", "days_left", |r: &PlaceRow<'_>| {
            Cell::plain(r.cert.days_left.to_string())
        })
        .only(Show::Csv),
        Column::new("NOT AFTER", "not_after", |r: &PlaceRow<'_>| {
            Cell::plain(&r.cert.not_after)
        })
        .only(Show::Wide),
        Column::new("AGENT", "agent", |r: &PlaceRow<'_>| {
            Cell::plain(&r.seen.agent)
        })
        .only(Show::Screen),
        Column::new("ROLE", "role", |r: &PlaceRow<'_>| Cell::plain(&r.cert.role)),
        Column::new("PLATFORM", "platform", |r: &PlaceRow<'_>| {
            Cell::plain(r.cert.platform)
        })
        .only(Show::Wide),
        Column::new("OWNER", "owner", |r: &PlaceRow<'_>| {
            Cell::plain(&r.cert.owner)
        })
        .only(Show::Wide),
        Column::new("SUBJECT", "subject", |r: &PlaceRow<'_>| {
            Cell::plain(&r.cert.subject)
        })
        .only(Show::Wide),
        Column::new("ISSUER", "issuer", |r: &PlaceRow<'_>| {
            Cell::plain(&r.cert.issuer)
        })
        .only(Show::Wide),
        Column::new("SERIAL", "serial", |r: &PlaceRow<'_>| {
            Cell::plain(&r.cert.serial)
        })
        .only(Show::Wide),
        Column::new("AGENT", "agent", |r: &PlaceRow<'_>| {
            Cell::plain(&r.seen.agent)
        })
        .only(Show::Csv),
        Column::new("HOSTNAME", "hostname", |r: &PlaceRow<'_>| {
            Cell::plain(&r.seen.hostname)
        })
        .only(Show::Wide),
        Column::new("WHERE", "location", |r: &PlaceRow<'_>| {
            Cell::plain(r.seen.location.describe())
        }),
        // Last, so that CSV columns keep their positions.
        Column::new("PINS", "pins", |r: &PlaceRow<'_>| pins_cell(r.cert)).only(Show::Wide),
    ]
}

/// An inventory query page by page (each answer bounded however large the fleet), joined.
async fn inventory_pages(
    c: &mut certfleet_common::proto::operator_client::OperatorClient<tonic::transport::Channel>,
    mut q: pb::InventoryQuery,
) -> Result<pb::InventoryList, tonic::Status> {
    // The largest page the controller serves: each page costs a round trip and a pass over the
    // index's filters.
    q.page_size = u32::try_from(crate::inventory::MAX_PAGE).unwrap_or(u32::MAX);
    let mut all = c.inventory(q.clone()).await?.into_inner();
    while !all.next_page_token.is_empty() {
        q.page_token = std::mem::take(&mut all.next_page_token);
        let page = c.inventory(q.clone()).await?.into_inner();
        all.items.extend(page.items);
        all.next_page_token = page.next_page_token;
    }
    Ok(all)
}

/// The pages of an inventory query, most urgent first, each handed over as it arrives: the
/// next page is asked for while this one is printed, so the controller writes one page while
/// the CLI decodes and prints another (issue 10: a 100,000-certificate listing is 20 pages).
/// A controller that predates `by_urgency` answers in fingerprint order and says nothing of
/// it (`by_urgency` false): its tokens are fingerprints and the same loop reads every page.
fn urgent_pages(
    c: &certfleet_common::proto::operator_client::OperatorClient<tonic::transport::Channel>,
    q: pb::InventoryQuery,
) -> tokio::sync::mpsc::Receiver<Result<pb::InventoryList, tonic::Status>> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut c = c.clone();
    let q = pb::InventoryQuery {
        by_urgency: true,
        page_size: u32::try_from(crate::inventory::MAX_PAGE).unwrap_or(u32::MAX),
        ..q
    };
    tokio::spawn(async move { send_pages(&mut c, q, &tx, |p| p).await });
    rx
}

/// Asks for `q`'s pages one after the other, following the tokens, and sends each on `tx` as
/// `wrap` makes it: true after the last page, false after a failure (sent) or once nobody
/// receives.
async fn send_pages<T>(
    c: &mut certfleet_common::proto::operator_client::OperatorClient<tonic::transport::Channel>,
    mut q: pb::InventoryQuery,
    tx: &tokio::sync::mpsc::Sender<Result<T, tonic::Status>>,
    mut wrap: impl FnMut(pb::InventoryList) -> T,
) -> bool {
    loop {
        let page = c
            .inventory(q.clone())
            .await
            .map(tonic::Response::into_inner);
        let token = page
            .as_ref()
            .map(|p| p.next_page_token.clone())
            .unwrap_or_default();
        let failed = page.is_err();
        if tx.send(page.map(&mut wrap)).await.is_err() || failed {
            return false;
        }
        if token.is_empty() {
            return true;
        }
        q.page_token = token;
    }
}

/// An inventory query's answer as a listing, page by page, each page turned into views as it
/// arrives. A listing that walks the fleet in fingerprint order (no expiry or agent filter) is
/// asked for as 16 fingerprint prefixes, four at a time: the controller writes some prefixes'
/// pages while others are on their way and decoded here, instead of each page waiting for the
/// last one's token (issue 10: a 100,000-certificate listing is 20 pages). Four rather than two:
/// 1.03 → 0.89 s median for a 100,000-certificate listing on two cores (paired runs), the
/// controller and the CLI's decoding kept busy at once. For the table, wide and CSV, which
/// measure every row before printing one: read most urgent first (one page after the other),
/// the table of 100,000 certificates took 0.88 s against 0.78 s this way (medians, 12 paired
/// runs with `farm-bench`).
async fn inventory_listing(
    c: &certfleet_common::proto::operator_client::OperatorClient<tonic::transport::Channel>,
    mut q: pb::InventoryQuery,
    now: i64,
) -> Result<Listing, tonic::Status> {
    q.page_size = u32::try_from(crate::inventory::MAX_PAGE).unwrap_or(u32::MAX);
    let prefixes: Vec<String> =
        if q.expiring_within_secs == 0 && q.agent.is_empty() && q.fingerprint.is_empty() {
            (0..16).map(|d| format!("{d:x}")).collect()
        } else {
            vec![q.fingerprint.clone()]
        };
    let prefixes = std::sync::Arc::new(prefixes);
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // (prefix's position, first page of it, the page)
    let (tx, mut rx) =
        tokio::sync::mpsc::channel::<Result<(usize, bool, pb::InventoryList), tonic::Status>>(4);
    for _ in 0..4 {
        let (mut c, q, prefixes, next, tx) = (
            c.clone(),
            q.clone(),
            prefixes.clone(),
            next.clone(),
            tx.clone(),
        );
        tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(prefix) = prefixes.get(n) else {
                    return;
                };
                // After the first prefix, a token of the prefix itself: items start after it,
                // which is at its first fingerprint, and the fleet-wide problems, health and
                // pins are not computed and sent again.
                let q = pb::InventoryQuery {
                    fingerprint: prefix.clone(),
                    page_token: if n == 0 {
                        String::new()
                    } else {
                        prefix.clone()
                    },
                    ..q.clone()
                };
                let mut first = true;
                let wrap = |p| (n, std::mem::replace(&mut first, false), p);
                if !send_pages(&mut c, q, &tx, wrap).await {
                    return;
                }
            }
        });
    }
    drop(tx);
    let mut listing = Listing::default();
    while let Some(page) = rx.recv().await {
        let (n, first, mut page) = page?;
        // Problems, health and pins come with the first page only (a controller that sends
        // them for each prefix's first page is not counted twice).
        if n != 0 || !first {
            page.problems.clear();
            page.health.clear();
            page.pins.clear();
        }
        listing.add(page, now);
    }
    listing.attach_pins();
    Ok(listing)
}

/// `inventory -o json`: the answer most urgent first, each page written as it arrives; the CLI
/// holds one page, not the fleet's 100 MB of JSON and the 200 MB of views it was made from.
/// Nothing is written until the first page is in (a refused or wrong query prints no JSON). A
/// controller that fails halfway leaves the array unclosed and the command fails naming how
/// many certificates were written. An older controller's pages (fingerprint order) are
/// gathered and sorted first.
async fn print_inventory_json(
    conn: &Conn,
    q: pb::InventoryQuery,
    out: &OutputArgs,
    now: i64,
) -> anyhow::Result<()> {
    let c = conn.client();
    let mut pages = urgent_pages(&c, q);
    let Some(first) = pages.recv().await else {
        anyhow::bail!("the inventory query ended without an answer");
    };
    let mut first = first.map_err(|s| conn.explain(s))?;
    if !first.by_urgency {
        let mut listing = Listing::default();
        listing.add(first, now);
        while let Some(page) = pages.recv().await {
            listing.add(page.map_err(|s| conn.explain(s))?, now);
        }
        listing.attach_pins();
        return print_inventory(listing, out);
    }
    let pins = pins_by_fingerprint(std::mem::take(&mut first.pins));
    let mut json = JsonPages::new(std::io::stdout(), pins);
    let mut page = Some(Ok(first));
    let written = loop {
        let Some(next) = page else {
            break json.finish();
        };
        let next = next.map_err(|s| {
            conn.explain(s).context(format!(
                "the listing stopped after {} certificates; the JSON printed is cut off there",
                json.written
            ))
        })?;
        if let Err(e) = json.page(next.items, now) {
            break Err(e);
        }
        page = pages.recv().await;
    };
    Ok(write_outcome("inventory", written)?)
}

/// A JSON array of inventory views written page by page, byte for byte what
/// `write_json_with` over [`views_json`] writes for the same views in one go.
struct JsonPages<W> {
    out: W,
    /// The answer's pins by the certificate they pin (they come with the first page).
    pins: HashMap<String, Vec<PinView>>,
    /// A page's JSON, reused page after page.
    buf: Vec<u8>,
    written: usize,
}

impl<W: std::io::Write> JsonPages<W> {
    fn new(out: W, pins: HashMap<String, Vec<PinView>>) -> Self {
        JsonPages {
            out,
            pins,
            buf: Vec::new(),
            written: 0,
        }
    }

    /// Writes a page's items (each with its pins).
    fn page(&mut self, items: Vec<pb::InventoryItem>, now: i64) -> std::io::Result<()> {
        self.buf.clear();
        for item in items {
            let mut v = into_view(item, now);
            if let Some(pins) = self.pins.remove(&v.fingerprint_sha256) {
                v.pins = pins;
            }
            self.buf.push(if self.written == 0 { b'[' } else { b',' });
            pretty::line(&mut self.buf, 1);
            v.write_pretty(&mut self.buf, 1);
            self.written += 1;
        }
        self.out.write_all(&self.buf)
    }

    /// Closes the array.
    fn finish(mut self) -> std::io::Result<()> {
        self.out
            .write_all(if self.written == 0 { b"[]\n" } else { b"\n]\n" })?;
        self.out.flush()
    }
}

/// Prints an inventory listing sorted by urgency. JSON is written as it is serialized: a
/// fleet's inventory is some 100 MB of it.
fn print_inventory(listing: Listing, out: &OutputArgs) -> anyhow::Result<()> {
    if out.output == Format::Json {
        let written = write_json_with(
            std::io::stdout().lock(),
            "inventory",
            &listing.sorted(),
            |chunk| Ok(views_json(chunk)),
        );
        // The process ends next: freeing two million strings one by one would add a sixth to
        // a fleet-sized listing's time, for memory the exit gives back at once.
        std::mem::forget(listing);
        return written.map_err(Into::into);
    }
    print!(
        "{}",
        render_inventory(&listing, out, Screen::detect(out.output))?
    );
    Ok(())
}

/// An inventory listing as text, most urgent first, with the health, problems and totals
/// under the table (table and wide only).
fn render_inventory(listing: &Listing, out: &OutputArgs, screen: Screen) -> anyhow::Result<String> {
    let Listing {
        health, problems, ..
    } = listing;
    let views = listing.sorted();
    let rows: Vec<PlaceRow<'_>> = views
        .iter()
        .flat_map(|cert| {
            cert.locations
                .iter()
                .map(move |seen| PlaceRow { cert, seen })
        })
        .collect();
    let mut s = render_list_on(
        out,
        "inventory",
        &views,
        &rows,
        &inventory_columns(),
        screen,
    )?;
    if out.output.is_table() {
        let width = screen.width.unwrap_or(usize::MAX);
        for h in health.iter().filter(|h| !h.healthy) {
            let line = format!(
                "HEALTH {} {}: {} ({})",
                h.kind, h.subject, h.state, h.detail
            );
            let _ = writeln!(s, "{}", shorten(&line, width));
        }
        for p in problems {
            let line = format!("PROBLEM [{}] {}: {}", p.collector, p.subject, p.message);
            let _ = writeln!(s, "{line}");
        }
        let expired = views.iter().filter(|v| v.status == "expired").count();
        let expiring = views.iter().filter(|v| v.status == "expiring").count();
        let _ = writeln!(
            s,
            "{} certificates: {expired} expired, {expiring} expiring; {} problems",
            views.len(),
            problems.len()
        );
    }
    Ok(s)
}

/// `inventory show`: one certificate, where it is, its chain up to a root, what it signs.
pub fn print_certificate(
    fp: &str,
    all: &pb::InventoryList,
    out: &OutputArgs,
) -> anyhow::Result<()> {
    let now = now();
    let items: Vec<&pb::InventoryItem> = all.items.iter().collect();
    let cert = |i: &pb::InventoryItem| i.certificate.clone().unwrap_or_default();
    let matches: Vec<&&pb::InventoryItem> = items
        .iter()
        .filter(|i| cert(i).fingerprint_sha256.starts_with(&fp.to_lowercase()))
        .collect();
    let item = match matches.as_slice() {
        [one] => **one,
        [] => anyhow::bail!("no certificate with fingerprint {fp} in the fleet inventory"),
        _ => anyhow::bail!(
            "fingerprint prefix {fp} is ambiguous ({} matches); give more digits",
            matches.len()
        ),
    };
    // Chain: follow AKI → SKI (and issuer DN → subject DN) until a self-signed cert or a gap.
    let mut chain = vec![item];
    let mut cur = cert(item);
    while cur.subject != cur.issuer && chain.len() < 10 {
        let parent = items.iter().find(|i| {
            let c = cert(i);
            c.is_ca
                && c.subject == cur.issuer
                && (cur.authority_key_id.is_empty() || c.subject_key_id == cur.authority_key_id)
        });
        match parent {
            Some(p) => {
                chain.push(p);
                cur = cert(p);
            }
            None => break,
        }
    }
    let me = cert(item);
    let signs: Vec<&&pb::InventoryItem> = items
        .iter()
        .filter(|i| {
            let c = cert(i);
            c.fingerprint_sha256 != me.fingerprint_sha256
                && c.issuer == me.subject
                && (me.subject_key_id.is_empty() || c.authority_key_id == me.subject_key_id)
        })
        .collect();
    let last = cert(
        chain
            .last()
            .expect("the chain holds the certificate itself"),
    );
    #[derive(Serialize)]
    struct Show {
        certificate: InventoryView,
        chain: Vec<InventoryView>,
        chain_complete: bool,
        signs: Vec<InventoryView>,
    }
    let mut certificate = inventory_view(item, now);
    certificate.pins = pins_of(all, &certificate.fingerprint_sha256);
    let data = Show {
        certificate,
        chain: chain
            .iter()
            .skip(1)
            .map(|i| inventory_view(i, now))
            .collect(),
        chain_complete: last.subject == last.issuer,
        signs: signs.iter().map(|i| inventory_view(i, now)).collect(),
    };
    print_document(out, "inventory show", &data, |_| {
        let v = &data.certificate;
        let mut s = String::new();
        let _ = writeln!(s, "fingerprint  {}", v.fingerprint_sha256);
        let _ = writeln!(s, "subject      {}", v.subject);
        let _ = writeln!(s, "issuer       {}", v.issuer);
        let _ = writeln!(s, "serial       {}", v.serial);
        let _ = writeln!(
            s,
            "validity     {} .. {} ({} days left, {})",
            v.not_before, v.not_after, v.days_left, v.status
        );
        let _ = writeln!(
            s,
            "key          {} {} bits{}",
            v.key_algorithm,
            v.key_bits,
            if v.is_ca { ", CA" } else { "" }
        );
        let _ = writeln!(s, "sans         {}", v.sans.join(", "));
        let _ = writeln!(s, "role         {} ({})", v.role, v.platform);
        let _ = writeln!(s, "renewed by   {}", v.owner);
        let _ = writeln!(s, "if expired   {}", v.impact);
        if !v.recipe.is_empty() {
            let _ = writeln!(s, "renew with   certfleet plan create {}", v.recipe);
        }
        let _ = writeln!(s, "found at:");
        for l in &v.locations {
            let _ = writeln!(
                s,
                "  {} ({}): {}",
                l.agent,
                l.hostname,
                l.location.describe()
            );
        }
        if !v.pins.is_empty() {
            let stale = v.pins.iter().filter(|p| p.state == "stale").count();
            let _ = writeln!(s, "pinned by ({} pin(s), {stale} stale):", v.pins.len());
            for p in &v.pins {
                let _ = writeln!(
                    s,
                    "  {:<7} {} {} on {}: pins {}{}{}",
                    p.state,
                    p.source,
                    p.name,
                    p.agent,
                    if p.pinned.is_empty() { "?" } else { &p.pinned },
                    match p.retrust.as_str() {
                        "" => "; re-trust by hand".to_owned(),
                        r => format!("; re-trust: {r}"),
                    },
                    if p.detail.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", p.detail)
                    }
                );
            }
        }
        let _ = writeln!(s, "chain:");
        for (depth, i) in chain.iter().enumerate() {
            let c = cert(i);
            let _ = writeln!(
                s,
                "  {}{} [{}] until {}",
                "  ".repeat(depth),
                c.subject,
                &c.fingerprint_sha256[..16.min(c.fingerprint_sha256.len())],
                format_time(c.not_after)
            );
        }
        if last.subject != last.issuer {
            let _ = writeln!(
                s,
                "  {}(issuer {} not in the inventory)",
                "  ".repeat(chain.len()),
                last.issuer
            );
        }
        if !signs.is_empty() {
            let _ = writeln!(s, "signs {} certificate(s):", signs.len());
            for i in &signs {
                let c = cert(i);
                let _ = writeln!(
                    s,
                    "  {} [{}] until {}",
                    c.subject,
                    &c.fingerprint_sha256[..16.min(c.fingerprint_sha256.len())],
                    format_time(c.not_after)
                );
            }
        }
        s
    })?;
    Ok(())
}

/// A place that holds a different certificate than in the earlier inventory.
#[derive(Serialize)]
pub struct ChangeView {
    role: String,
    agent: String,
    location: String,
    before_fingerprint: String,
    before_not_after: String,
    before_days_left: i64,
    after_fingerprint: String,
    after_not_after: String,
    after_days_left: i64,
    after_status: &'static str,
}

fn change_columns() -> Vec<Column<ChangeView>> {
    vec![
        Column::new("ROLE", "role", |c: &ChangeView| Cell::plain(&c.role)),
        Column::new("AGENT", "agent", |c: &ChangeView| Cell::plain(&c.agent)),
        Column::new("WHERE", "location", |c: &ChangeView| {
            Cell::plain(&c.location)
        }),
        Column::new("BEFORE", "before", |c: &ChangeView| {
            let days = c.before_days_left;
            Cell::toned(
                format!(
                    "{} ({})",
                    c.before_not_after,
                    if days < 0 {
                        format!("expired {}d ago", -days)
                    } else {
                        format!("{days}d")
                    }
                ),
                if days < 0 { Tone::Bad } else { Tone::Warn },
            )
        })
        .only(Show::Screen),
        Column::new("AFTER", "after", |c: &ChangeView| {
            let days = c.after_days_left;
            Cell::toned(
                if days < 0 {
                    format!("EXPIRED {}d ago", -days)
                } else {
                    days.to_string()
                },
                match c.after_status {
                    "expired" => Tone::Bad,
                    "expiring" => Tone::Warn,
                    _ => Tone::Good,
                },
            )
        })
        .only(Show::Screen),
        Column::new("", "before_fingerprint", |c: &ChangeView| {
            Cell::plain(&c.before_fingerprint)
        })
        .only(Show::Csv),
        Column::new("", "before_not_after", |c: &ChangeView| {
            Cell::plain(&c.before_not_after)
        })
        .only(Show::Csv),
        Column::new("", "after_fingerprint", |c: &ChangeView| {
            Cell::plain(&c.after_fingerprint)
        })
        .only(Show::Csv),
        Column::new("", "after_not_after", |c: &ChangeView| {
            Cell::plain(&c.after_not_after)
        })
        .only(Show::Csv),
    ]
}

/// `inventory --compare BEFORE.json`: what changed since an earlier `inventory -o json`, place by
/// place (agent + location): the certificate that was there, the one there now.
pub fn print_comparison(
    before_path: &Path,
    now_list: &pb::InventoryList,
    out: &OutputArgs,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(before_path)
        .with_context(|| format!("reading {}", before_path.display()))?;
    let before: Vec<serde_json::Value> = serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: not the output of `certfleet inventory -o json`",
            before_path.display()
        )
    })?;
    let now = now();
    let place = |agent: &str, loc: &serde_json::Value| {
        let l: Location = serde_json::from_value(loc.clone()).unwrap_or_default();
        format!("{agent}\t{}", l.describe())
    };
    let mut was: BTreeMap<String, (String, i64, String)> = BTreeMap::new();
    for item in &before {
        for l in item["locations"].as_array().into_iter().flatten() {
            was.insert(
                place(l["agent"].as_str().unwrap_or(""), l),
                (
                    item["fingerprint_sha256"].as_str().unwrap_or("").to_owned(),
                    item["days_left"].as_i64().unwrap_or(0),
                    item["not_after"].as_str().unwrap_or("").to_owned(),
                ),
            );
        }
    }
    let mut changes = Vec::new();
    for item in &now_list.items {
        let v = inventory_view(item, now);
        for s in &v.locations {
            let key = format!("{}\t{}", s.agent, s.location.describe());
            let Some((fp, days, na)) = was.get(&key) else {
                continue;
            };
            if *fp == v.fingerprint_sha256 {
                continue;
            }
            changes.push(ChangeView {
                role: v.role.clone(),
                agent: s.agent.clone(),
                location: s.location.describe(),
                before_fingerprint: fp.clone(),
                before_not_after: na.clone(),
                before_days_left: *days,
                after_fingerprint: v.fingerprint_sha256.clone(),
                after_not_after: v.not_after.clone(),
                after_days_left: v.days_left,
                after_status: v.status,
            });
        }
    }
    print!(
        "{}",
        render_list(
            out,
            "inventory --compare",
            &changes,
            &changes,
            &change_columns()
        )?
    );
    if out.output.is_table() {
        println!(
            "{} place(s) now hold a different certificate than in {}",
            changes.len(),
            before_path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn item(
        fp: char,
        role: &str,
        subject: &str,
        days: i64,
        places: &[(&str, &str)],
    ) -> pb::InventoryItem {
        pb::InventoryItem {
            certificate: Some(pb::CertificateRecord {
                fingerprint_sha256: fp.to_string().repeat(64),
                subject: subject.into(),
                issuer: "CN=Corp Issuing CA 2019, O=Example Corporation, C=US".into(),
                serial: "1a2b".into(),
                not_before: NOW - 300 * 86_400,
                not_after: NOW + days * 86_400 + 3600,
                role: role.into(),
                ..Default::default()
            }),
            seen: places
                .iter()
                .map(|(agent, path)| pb::SeenAt {
                    agent_id: format!("id-{agent}"),
                    agent_name: (*agent).into(),
                    hostname: format!("{agent}.dc1.example.org"),
                    location: Some(pb::Location {
                        kind: "file".into(),
                        path: (*path).into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            owner: String::new(),
        }
    }

    /// The hand-written JSON of `inventory -o json` is serde_json's pretty JSON of the same
    /// views, byte for byte: every field, optional fields present and absent, empty and full
    /// lists, pins or none, and strings that need escaping (quotes, backslashes, control
    /// characters) next to ones that do not (non-ASCII included).
    #[test]
    fn views_json_is_serde_json_s() {
        let odd = [
            "CN=plain, O=Example",
            "CN=\"quoted\", O=back\\slash",
            "O=\"Quotes Only\" Inc",
            "C:\\backslashes\\only",
            "tab\there, new\nline, bell\u{7}, del\u{7f}, nul\u{0}",
            "CN=日本語のCA, O=Пример 🔐",
            "",
        ];
        let mut views = Vec::new();
        for (n, text) in odd.iter().enumerate() {
            let mut i = item(
                char::from(b'a' + n as u8),
                if n % 2 == 0 {
                    "vsphere.machine_ssl"
                } else {
                    ""
                },
                text,
                n as i64 * 40 - 60,
                &[("vc1", *text), ("esx2", "/etc/vmware/ssl/rui.crt")][..n.min(2)],
            );
            let c = i.certificate.as_mut().unwrap();
            c.issuer = odd[(n + 1) % odd.len()].into();
            c.sans = odd[..n].iter().map(|s| (*s).to_owned()).collect();
            c.key_algorithm = text.to_string();
            c.key_bits = n as u32 * 1024;
            c.is_ca = n % 2 == 1;
            c.subject_key_id = text.to_string();
            i.owner = text.to_string();
            if let Some(l) = i.seen.first_mut().and_then(|s| s.location.as_mut()) {
                l.store = text.to_string();
                l.alias = if n == 2 {
                    String::new()
                } else {
                    "__MACHINE_CERT".into()
                };
                l.detail = text.to_string();
            }
            let mut v = into_view(i, NOW);
            if n % 2 == 0 {
                v.pins = vec![PinView {
                    agent: "vc1".into(),
                    source: text.to_string(),
                    name: "vpxd".into(),
                    state: "stale".into(),
                    pinned: odd[1].into(),
                    retrust: String::new(),
                    detail: text.to_string(),
                }];
            }
            views.push(v);
        }
        let refs: Vec<&InventoryView> = views.iter().collect();
        for chunk in [&refs[..1], &refs[..], &refs[2..4]] {
            let serde = serde_json::to_vec_pretty(chunk).unwrap();
            let ours = views_json(chunk);
            assert_eq!(
                String::from_utf8_lossy(&ours),
                String::from_utf8_lossy(&serde)
            );
        }
        assert_eq!(views_json(&[]), b"[]");
    }

    fn fleet() -> pb::InventoryList {
        pb::InventoryList {
            items: vec![
                item(
                    'a',
                    "ovirt.engine.apache",
                    "CN=engine.ovirt.dc1.example.org, O=Example Corporation",
                    -3,
                    &[("engine-01", "/etc/pki/ovirt-engine/certs/apache.cer")],
                ),
                pb::InventoryItem {
                    owner: "platform:vcenter-auto-renew".into(),
                    ..item(
                        'b',
                        "vsphere.machine_ssl",
                        "CN=vcsa-01.dc1.example.org",
                        12,
                        &[(
                            "vcsa-01",
                            "/usr/lib/vmware-vmafd/bin/vecs-cli/MACHINE_SSL_CERT/__MACHINE_CERT",
                        )],
                    )
                },
                item(
                    'c',
                    "file.pem",
                    "CN=app.example.org",
                    200,
                    &[
                        ("web-01", "/etc/app/tls/app.pem"),
                        (
                            "web-02",
                            "/srv/containers/storage/overlay/3f9a0c1e7b2d/merged/etc/app/tls/app.pem",
                        ),
                    ],
                ),
            ],
            ..Default::default()
        }
    }

    #[test]
    fn listings_put_the_most_urgent_first_and_each_pin_on_its_certificate() {
        let mut list = fleet();
        // Two more: expiring on the same second as 'b' (the fingerprint orders them) and long
        // valid.
        list.items
            .push(item('0', "file.pem", "CN=tie", 12, &[("web-03", "/x.pem")]));
        list.items.push(item(
            '9',
            "file.pem",
            "CN=late",
            900,
            &[("web-03", "/y.pem")],
        ));
        let pin = |fp: char, agent: &str, name: &str, state: &str| pb::Pin {
            source: "declared".into(),
            name: name.into(),
            cert_fingerprint: fp.to_string().repeat(64),
            state: state.into(),
            agent: agent.into(),
            ..Default::default()
        };
        list.pins = vec![
            pin('b', "vcsa-01", "nsx", "stale"),
            pin('c', "web-02", "lb", "match"),
            pin('b', "vcsa-01", "backup", "match"),
            // Pinned to nothing known: left out.
            pb::Pin {
                cert_fingerprint: String::new(),
                ..pin('x', "web-01", "orphan", "unknown")
            },
        ];
        let listing = Listing::new(list, NOW);
        let views = listing.sorted();
        let order: Vec<&str> = views.iter().map(|v| &v.subject[..]).collect();
        assert_eq!(
            order,
            [
                "CN=engine.ovirt.dc1.example.org, O=Example Corporation",
                "CN=tie",
                "CN=vcsa-01.dc1.example.org",
                "CN=app.example.org",
                "CN=late"
            ]
        );
        let pins = |subject: &str| -> Vec<String> {
            let v = views.iter().find(|v| v.subject == subject).unwrap();
            v.pins
                .iter()
                .map(|p| format!("{} {}", p.name, p.state))
                .collect()
        };
        assert_eq!(
            pins("CN=vcsa-01.dc1.example.org"),
            ["backup match", "nsx stale"]
        );
        assert_eq!(pins("CN=app.example.org"), ["lb match"]);
        assert!(pins("CN=tie").is_empty());
    }

    /// `-o json` written page by page (the controller's order, most urgent first) is byte for
    /// byte the JSON of the whole listing sorted here: the same separators across pages, each
    /// pin on its certificate whichever page it is on, an empty page in between, and `[]` for
    /// an empty answer.
    #[test]
    fn json_written_page_by_page_is_the_sorted_listing_s() {
        let mut list = fleet();
        list.pins = vec![pb::Pin {
            source: "declared".into(),
            name: "nsx".into(),
            cert_fingerprint: "c".repeat(64),
            state: "stale".into(),
            agent: "web-02".into(),
            ..Default::default()
        }];
        let whole = Listing::new(list.clone(), NOW);
        let mut expected = Vec::new();
        write_json_with(&mut expected, "inventory", &whole.sorted(), |chunk| {
            Ok(views_json(chunk))
        })
        .unwrap();
        // The controller's order: a (expired), b (expiring), c; pages of two, none, one.
        let mut items = list.items.clone();
        let c = items.pop().unwrap();
        let mut got = Vec::new();
        let mut json = JsonPages::new(&mut got, pins_by_fingerprint(list.pins.clone()));
        json.page(items, NOW).unwrap();
        json.page(Vec::new(), NOW).unwrap();
        json.page(vec![c], NOW).unwrap();
        json.finish().unwrap();
        assert_eq!(
            String::from_utf8(got).unwrap(),
            String::from_utf8(expected).unwrap()
        );
        assert!(whole.views.iter().any(|v| !v.pins.is_empty()));

        let mut empty = Vec::new();
        let json = JsonPages::new(&mut empty, HashMap::new());
        json.finish().unwrap();
        let mut expected = Vec::new();
        write_json_with(
            &mut expected,
            "inventory",
            &[] as &[&InventoryView],
            |chunk| Ok(views_json(chunk)),
        )
        .unwrap();
        assert_eq!(empty, expected);
        assert_eq!(empty, b"[]\n");
    }

    /// The default inventory table at 80 columns, compared with `testdata/inventory-80.txt`
    /// (`UPDATE_GOLDEN=1` rewrites it after a deliberate change).
    #[test]
    fn inventory_table_golden_at_80_columns() {
        let out = OutputArgs::TABLE;
        let screen = Screen {
            width: Some(80),
            color: false,
        };
        let text = render_inventory(&Listing::new(fleet(), NOW), &out, screen).unwrap();
        for l in text.lines() {
            assert!(
                l.chars().count() <= 80,
                "{l:?} is longer than 80 columns\n{text}"
            );
        }
        let golden = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/cli/testdata/inventory-80.txt");
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&golden, &text).unwrap();
        }
        let want = std::fs::read_to_string(&golden).unwrap_or_default();
        assert_eq!(text, want, "golden {} differs", golden.display());
    }

    #[test]
    fn inventory_csv_is_one_line_per_place_with_every_column() {
        let out = OutputArgs {
            output: Format::Csv,
            no_headers: false,
        };
        let screen = Screen {
            width: Some(80),
            color: false,
        };
        let text = render_inventory(&Listing::new(fleet(), NOW), &out, screen).unwrap();
        let mut lines = text.lines();
        assert_eq!(
            lines.next().unwrap(),
            "fingerprint_sha256,status,days_left,not_after,role,platform,owner,subject,issuer,serial,agent,hostname,location,pins"
        );
        let rows: Vec<&str> = lines.collect();
        assert_eq!(rows.len(), 4, "{text}");
        // The owner column: the platform's renewer where known, `-` where nothing is known.
        let owner_of = |role: &str| {
            rows.iter()
                .find(|r| r.contains(role))
                .and_then(|r| r.split(',').nth(6))
                .unwrap_or_default()
        };
        assert_eq!(
            owner_of("vsphere.machine_ssl"),
            "platform:vcenter-auto-renew",
            "{text}"
        );
        assert_eq!(owner_of("ovirt.engine.apache"), "-", "{text}");
        assert!(
            text.contains(
                "/srv/containers/storage/overlay/3f9a0c1e7b2d/merged/etc/app/tls/app.pem"
            ),
            "csv is never shortened"
        );
    }
}

//! The operator side of the `certfleet` CLI: turns commands into operator RPCs and renders the
//! answers as tables for people or JSON (arrays of snake_case objects) for scripts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use certfleet_common::model::{Location, format_time, now};
use certfleet_common::proto as pb;
use certfleet_common::proto::operator_client::OperatorClient;
use certfleet_common::roles::{self, Status as Urgency};
use comfy_table::{Cell, Color, ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use serde::Serialize;
use tonic::transport::Channel;

/// Output format of list commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Human table.
    Table,
    /// JSON array of objects.
    Json,
    /// CSV (inventory only).
    Csv,
}

/// Largest answer the CLI accepts from the controller.
const MAX_ANSWER_BYTES: usize = 512 << 20;

/// A connection to the controller as an operator.
pub struct Conn {
    /// Address as given.
    pub addr: String,
    client: OperatorClient<Channel>,
}

impl Conn {
    /// Connects with the identity in `dir` (`ca.pem`, `cert.pem`, `key.pem`).
    pub fn new(addr: &str, dir: &Path) -> anyhow::Result<Self> {
        let read = |f: &str| {
            let p = dir.join(f);
            std::fs::read_to_string(&p)
                .with_context(|| format!("reading operator identity {}", p.display()))
        };
        let channel = certfleet_common::tls::mtls_channel(
            addr,
            &read("ca.pem")?,
            &read("cert.pem")?,
            &read("key.pem")?,
        )?;
        Ok(Conn {
            addr: addr.to_owned(),
            // Inventory answers grow with the fleet: the limit is explicit and generous.
            client: OperatorClient::new(channel)
                .max_decoding_message_size(MAX_ANSWER_BYTES)
                .max_encoding_message_size(4 << 20),
        })
    }

    /// The raw client, with errors explained.
    pub fn client(&self) -> OperatorClient<Channel> {
        self.client.clone()
    }

    /// Turns a status into an operator-readable error naming the controller.
    pub fn explain(&self, s: tonic::Status) -> anyhow::Error {
        anyhow!(certfleet_common::tls::explain_status(&self.addr, &s))
    }
}

fn t(secs: i64) -> Option<String> {
    (secs > 0).then(|| format_time(secs))
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header.to_vec());
    t
}

fn print_json<T: Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).expect("serializable"));
}

fn labels_map(l: &[pb::Label]) -> BTreeMap<String, String> {
    l.iter().map(|l| (l.key.clone(), l.value.clone())).collect()
}

// === agents ===

/// JSON view of an agent.
#[derive(Serialize)]
pub struct AgentView {
    id: String,
    name: String,
    hostname: String,
    platforms: Vec<String>,
    version: String,
    connected: bool,
    last_seen: Option<String>,
    cert_not_after: Option<String>,
    state: String,
    enrolled_at: Option<String>,
    labels: BTreeMap<String, String>,
    cert_fingerprint: String,
    remote_addr: String,
}

impl From<&pb::AgentInfo> for AgentView {
    fn from(a: &pb::AgentInfo) -> Self {
        AgentView {
            id: a.id.clone(),
            name: a.name.clone(),
            hostname: a.hostname.clone(),
            platforms: a.platforms.clone(),
            version: a.version.clone(),
            connected: a.connected,
            last_seen: t(a.last_seen),
            cert_not_after: t(a.cert_not_after),
            state: a.state.clone(),
            enrolled_at: t(a.enrolled_at),
            labels: labels_map(&a.labels),
            cert_fingerprint: a.cert_fingerprint.clone(),
            remote_addr: a.remote_addr.clone(),
        }
    }
}

/// Prints agents.
pub fn print_agents(agents: &[pb::AgentInfo], format: Format) {
    if format == Format::Json {
        print_json(&agents.iter().map(AgentView::from).collect::<Vec<_>>());
        return;
    }
    let mut tb = table(&[
        "ID",
        "NAME",
        "HOSTNAME",
        "PLATFORMS",
        "STATE",
        "CONNECTED",
        "LAST SEEN",
        "CERT NOT AFTER",
        "VERSION",
    ]);
    for a in agents {
        tb.add_row(vec![
            Cell::new(&a.id),
            Cell::new(&a.name),
            Cell::new(&a.hostname),
            Cell::new(a.platforms.join(",")),
            Cell::new(&a.state).fg(match a.state.as_str() {
                "active" => Color::Green,
                "revoked" => Color::Red,
                _ => Color::Yellow,
            }),
            Cell::new(if a.connected { "yes" } else { "no" }).fg(if a.connected {
                Color::Green
            } else {
                Color::Red
            }),
            Cell::new(t(a.last_seen).unwrap_or_else(|| "never".into())),
            Cell::new(t(a.cert_not_after).unwrap_or_default()),
            Cell::new(&a.version),
        ]);
    }
    println!("{tb}");
}

// === tokens ===

#[derive(Serialize)]
struct TokenView {
    id: String,
    state: String,
    created_at: Option<String>,
    expires_at: Option<String>,
    created_by: String,
    labels: BTreeMap<String, String>,
    used_by: String,
}

/// Prints tokens.
pub fn print_tokens(tokens: &[pb::TokenInfo], format: Format) {
    let views: Vec<TokenView> = tokens
        .iter()
        .map(|k| TokenView {
            id: k.id.clone(),
            state: k.state.clone(),
            created_at: t(k.created_at),
            expires_at: t(k.expires_at),
            created_by: k.created_by.clone(),
            labels: labels_map(&k.labels),
            used_by: k.used_by.clone(),
        })
        .collect();
    if format == Format::Json {
        print_json(&views);
        return;
    }
    let mut tb = table(&["ID", "STATE", "EXPIRES", "CREATED BY", "LABELS", "USED BY"]);
    for v in views {
        let labels = v
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        tb.add_row(vec![
            v.id,
            v.state,
            v.expires_at.unwrap_or_default(),
            v.created_by,
            labels,
            v.used_by,
        ]);
    }
    println!("{tb}");
}

// === operators ===

#[derive(Serialize)]
struct OperatorView {
    name: String,
    role: String,
    state: String,
    issued_at: Option<String>,
    issued_by: String,
}

/// Prints operators.
pub fn print_operators(ops: &[pb::OperatorEntry], format: Format) {
    let views: Vec<OperatorView> = ops
        .iter()
        .map(|o| OperatorView {
            name: o.name.clone(),
            role: o.role.clone(),
            state: o.state.clone(),
            issued_at: t(o.issued_at),
            issued_by: o.issued_by.clone(),
        })
        .collect();
    if format == Format::Json {
        print_json(&views);
        return;
    }
    let mut tb = table(&["NAME", "ROLE", "STATE", "ISSUED AT", "ISSUED BY"]);
    for v in views {
        tb.add_row(vec![
            v.name,
            v.role,
            v.state,
            v.issued_at.unwrap_or_default(),
            v.issued_by,
        ]);
    }
    println!("{tb}");
}

// === audit ===

#[derive(Serialize)]
struct AuditView {
    seq: u64,
    at: String,
    actor: String,
    action: String,
    target: String,
    detail: String,
}

/// Prints audit entries.
pub fn print_audit(entries: &[pb::AuditEntry], format: Format) {
    let views: Vec<AuditView> = entries
        .iter()
        .map(|e| AuditView {
            seq: e.seq,
            at: format_time(e.at),
            actor: e.actor.clone(),
            action: e.action.clone(),
            target: e.target.clone(),
            detail: e.detail.clone(),
        })
        .collect();
    if format == Format::Json {
        print_json(&views);
        return;
    }
    let mut tb = table(&["SEQ", "AT", "ACTOR", "ACTION", "TARGET", "DETAIL"]);
    for v in views {
        tb.add_row(vec![
            v.seq.to_string(),
            v.at,
            v.actor,
            v.action,
            v.target,
            v.detail,
        ]);
    }
    println!("{tb}");
}

// === inventory ===

/// JSON view of a sighting.
#[derive(Serialize)]
struct SeenView {
    agent_id: String,
    agent: String,
    hostname: String,
    #[serde(flatten)]
    location: Location,
}

/// JSON view of an inventory item.
#[derive(Serialize)]
struct InventoryView {
    fingerprint_sha256: String,
    subject: String,
    issuer: String,
    serial: String,
    sans: Vec<String>,
    not_before: String,
    not_after: String,
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
    locations: Vec<SeenView>,
}

fn inventory_view(i: &pb::InventoryItem, now: i64) -> InventoryView {
    let c = i.certificate.clone().unwrap_or_default();
    let info = roles::lookup(&c.role);
    InventoryView {
        days_left: (c.not_after - now).div_euclid(86_400),
        status: Urgency::of(&c.role, c.not_after, now).as_str(),
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
        locations: i
            .seen
            .iter()
            .map(|s| SeenView {
                agent_id: s.agent_id.clone(),
                agent: s.agent_name.clone(),
                hostname: s.hostname.clone(),
                location: s.location.clone().unwrap_or_default().into(),
            })
            .collect(),
    }
}

fn days_cell(v: &InventoryView) -> Cell {
    let c = Cell::new(if v.days_left < 0 {
        format!("EXPIRED {}d ago", -v.days_left)
    } else {
        v.days_left.to_string()
    });
    match v.status {
        "expired" => c.fg(Color::Red),
        "expiring" => c.fg(Color::Yellow),
        _ => c.fg(Color::Green),
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// Prints an inventory listing sorted by urgency.
pub fn print_inventory(list: &pb::InventoryList, format: Format) {
    let now = now();
    let mut views: Vec<InventoryView> = list.items.iter().map(|i| inventory_view(i, now)).collect();
    let rank = |s: &str| match s {
        "expired" => 0,
        "expiring" => 1,
        _ => 2,
    };
    views.sort_by(|a, b| {
        (rank(a.status), &a.not_after, &a.fingerprint_sha256).cmp(&(
            rank(b.status),
            &b.not_after,
            &b.fingerprint_sha256,
        ))
    });
    match format {
        Format::Json => print_json(&views),
        Format::Csv => {
            println!(
                "fingerprint_sha256,status,days_left,not_after,role,platform,subject,issuer,serial,agent,hostname,location"
            );
            for v in &views {
                for s in &v.locations {
                    println!(
                        "{},{},{},{},{},{},{},{},{},{},{},{}",
                        v.fingerprint_sha256,
                        v.status,
                        v.days_left,
                        v.not_after,
                        csv_field(&v.role),
                        v.platform,
                        csv_field(&v.subject),
                        csv_field(&v.issuer),
                        v.serial,
                        csv_field(&s.agent),
                        csv_field(&s.hostname),
                        csv_field(&s.location.describe())
                    );
                }
            }
        }
        Format::Table => {
            let mut tb = table(&[
                "DAYS LEFT",
                "NOT AFTER",
                "ROLE",
                "SUBJECT",
                "AGENT",
                "WHERE",
                "FINGERPRINT",
            ]);
            for v in &views {
                let agents: Vec<String> = dedup(v.locations.iter().map(|s| s.agent.clone()));
                let wher: Vec<String> = v.locations.iter().map(|s| s.location.describe()).collect();
                tb.add_row(vec![
                    days_cell(v),
                    Cell::new(&v.not_after),
                    Cell::new(&v.role),
                    Cell::new(&v.subject),
                    Cell::new(agents.join("\n")),
                    Cell::new(wher.join("\n")),
                    Cell::new(&v.fingerprint_sha256[..16]),
                ]);
            }
            println!("{tb}");
            for h in list.health.iter().filter(|h| !h.healthy) {
                println!(
                    "HEALTH {} {}: {} ({})",
                    h.kind, h.subject, h.state, h.detail
                );
            }
            for p in &list.problems {
                println!("PROBLEM [{}] {}: {}", p.collector, p.subject, p.message);
            }
            let expired = views.iter().filter(|v| v.status == "expired").count();
            let expiring = views.iter().filter(|v| v.status == "expiring").count();
            println!(
                "{} certificates: {expired} expired, {expiring} expiring; {} problems",
                views.len(),
                list.problems.len()
            );
        }
    }
}

fn dedup(it: impl Iterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for s in it {
        if !v.contains(&s) {
            v.push(s);
        }
    }
    v
}

/// `inventory show`: one certificate, where it is, its chain up to a root, what it signs.
pub fn print_certificate(fp: &str, all: &pb::InventoryList, format: Format) -> anyhow::Result<()> {
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
    if format == Format::Json {
        #[derive(Serialize)]
        struct Show {
            certificate: InventoryView,
            chain: Vec<InventoryView>,
            chain_complete: bool,
            signs: Vec<InventoryView>,
        }
        let complete = cert(chain.last().unwrap()).subject == cert(chain.last().unwrap()).issuer;
        print_json(&Show {
            certificate: inventory_view(item, now),
            chain: chain
                .iter()
                .skip(1)
                .map(|i| inventory_view(i, now))
                .collect(),
            chain_complete: complete,
            signs: signs.iter().map(|i| inventory_view(i, now)).collect(),
        });
        return Ok(());
    }
    let v = inventory_view(item, now);
    println!("fingerprint  {}", v.fingerprint_sha256);
    println!("subject      {}", v.subject);
    println!("issuer       {}", v.issuer);
    println!("serial       {}", v.serial);
    println!(
        "validity     {} .. {} ({} days left, {})",
        v.not_before, v.not_after, v.days_left, v.status
    );
    println!(
        "key          {} {} bits{}",
        v.key_algorithm,
        v.key_bits,
        if v.is_ca { ", CA" } else { "" }
    );
    println!("sans         {}", v.sans.join(", "));
    println!("role         {} ({})", v.role, v.platform);
    println!("if expired   {}", v.impact);
    if !v.recipe.is_empty() {
        println!("renew with   certfleet plan create {}", v.recipe);
    }
    println!("found at:");
    for s in &v.locations {
        println!("  {} ({}): {}", s.agent, s.hostname, s.location.describe());
    }
    println!("chain:");
    for (depth, i) in chain.iter().enumerate() {
        let c = cert(i);
        println!(
            "  {}{} [{}] until {}",
            "  ".repeat(depth),
            c.subject,
            &c.fingerprint_sha256[..16],
            format_time(c.not_after)
        );
    }
    let last = cert(chain.last().unwrap());
    if last.subject != last.issuer {
        println!(
            "  {}(issuer {} not in the inventory)",
            "  ".repeat(chain.len()),
            last.issuer
        );
    }
    if !signs.is_empty() {
        println!("signs {} certificate(s):", signs.len());
        for i in signs {
            let c = cert(i);
            println!(
                "  {} [{}] until {}",
                c.subject,
                &c.fingerprint_sha256[..16],
                format_time(c.not_after)
            );
        }
    }
    Ok(())
}

/// Parses `k=v` labels.
pub fn parse_labels(labels: &[String]) -> anyhow::Result<Vec<pb::Label>> {
    labels
        .iter()
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .ok_or_else(|| anyhow!("label {l:?} is not key=value"))?;
            Ok(pb::Label {
                key: k.to_owned(),
                value: v.to_owned(),
            })
        })
        .collect()
}

/// Generates an operator key in `out` and returns the CSR; the key never leaves this machine.
pub fn new_operator_key(out: &Path, name: &str) -> anyhow::Result<(PathBuf, String)> {
    if out.join("key.pem").exists() {
        anyhow::bail!(
            "{} already holds a key.pem; refusing to overwrite an identity",
            out.display()
        );
    }
    certfleet_common::atomic::create_private_dir(out)?;
    let (key, csr) = certfleet_common::pki::new_key_and_csr(name)?;
    let key_path = out.join("key.pem");
    certfleet_common::atomic::write_file(
        &key_path,
        key.as_bytes(),
        certfleet_common::atomic::PRIVATE,
    )?;
    Ok((key_path, csr))
}

// === plans ===

#[derive(Serialize)]
struct StepView {
    id: String,
    name: String,
    stage: String,
    target: String,
    agent: String,
    agent_id: String,
    action: String,
    args: serde_json::Value,
    commands: Vec<String>,
    files: Vec<String>,
    depends_on: Vec<String>,
    state: String,
    canary: bool,
    attempts: u32,
    message: String,
    started_at: Option<String>,
    finished_at: Option<String>,
    details: serde_json::Value,
    output: Vec<String>,
}

#[derive(Serialize)]
struct PlanView {
    id: String,
    recipe: String,
    state: String,
    origin: String,
    created_at: String,
    created_by: String,
    message: String,
    dry_run: bool,
    max_parallel: u32,
    canary: bool,
    failure_budget: u32,
    window: String,
    steps_total: usize,
    steps_succeeded: usize,
    steps_failed: usize,
    steps: Vec<StepView>,
}

fn plan_view(p: &pb::PlanInfo) -> PlanView {
    let pol = p.policy.clone().unwrap_or_default();
    PlanView {
        id: p.id.clone(),
        recipe: p.recipe.clone(),
        state: p.state.clone(),
        origin: p.origin.clone(),
        created_at: format_time(p.created_at),
        created_by: p.created_by.clone(),
        message: p.message.clone(),
        dry_run: p.dry_run,
        max_parallel: pol.max_parallel.max(1),
        canary: pol.canary,
        failure_budget: pol.failure_budget,
        window: pol.window,
        steps_total: p.steps.len(),
        steps_succeeded: p.steps.iter().filter(|s| s.state == "succeeded").count(),
        steps_failed: p.steps.iter().filter(|s| s.state == "failed").count(),
        steps: p
            .steps
            .iter()
            .map(|s| StepView {
                id: s.id.clone(),
                name: s.name.clone(),
                stage: s.stage.clone(),
                target: s.target.clone(),
                agent: s.agent_name.clone(),
                agent_id: s.agent_id.clone(),
                action: s.action.clone(),
                args: serde_json::from_str(&s.args_json).unwrap_or_default(),
                commands: s.commands.clone(),
                files: s.files.clone(),
                depends_on: s.depends_on.clone(),
                state: s.state.clone(),
                canary: s.canary,
                attempts: s.attempts,
                message: s.message.clone(),
                started_at: t(s.started_at),
                finished_at: t(s.finished_at),
                details: serde_json::from_str(&s.details_json).unwrap_or_default(),
                output: s.output.clone(),
            })
            .collect(),
    }
}

fn state_cell(state: &str) -> Cell {
    let c = Cell::new(state);
    match state {
        "succeeded" => c.fg(Color::Green),
        "failed" | "skipped" => c.fg(Color::Red),
        "dispatched" | "running" | "rolling_back" => c.fg(Color::Cyan),
        "rolled_back" => c.fg(Color::Magenta),
        _ => c,
    }
}

/// Prints one plan: header, then every step with host, action, commands and files.
pub fn print_plan(p: &pb::PlanInfo, format: Format, with_output: bool) {
    if format == Format::Json {
        print_json(&plan_view(p));
        return;
    }
    let v = plan_view(p);
    println!(
        "plan {}  recipe {}  state {}{}",
        v.id,
        v.recipe,
        v.state,
        if v.dry_run {
            "  (dry run: nothing will be changed)"
        } else {
            ""
        }
    );
    println!(
        "policy: max_parallel {}, canary {}, failure budget {}, window {}",
        v.max_parallel,
        if v.canary { "yes" } else { "no" },
        v.failure_budget,
        if v.window.is_empty() {
            "any time".into()
        } else {
            v.window.clone()
        }
    );
    if !v.message.is_empty() {
        println!("{}", v.message);
    }
    let mut tb = table(&[
        "#",
        "STAGE",
        "HOST",
        "ACTION",
        "TARGET",
        "COMMANDS / FILES",
        "STATE",
        "MESSAGE",
    ]);
    for (i, s) in v.steps.iter().enumerate() {
        let mut what: Vec<String> = s.commands.iter().map(|c| format!("$ {c}")).collect();
        what.extend(s.files.iter().map(|f| format!("~ {f}")));
        tb.add_row(vec![
            Cell::new(format!("{}{}", i + 1, if s.canary { "*" } else { "" })),
            Cell::new(&s.stage),
            Cell::new(&s.agent),
            Cell::new(&s.action),
            Cell::new(&s.target),
            Cell::new(what.join("\n")),
            state_cell(&s.state),
            Cell::new(&s.message),
        ]);
    }
    println!("{tb}");
    if v.steps.iter().any(|s| s.canary) {
        println!("* canary target");
    }
    if with_output {
        for s in &v.steps {
            if !s.output.is_empty() {
                println!("--- {} {} on {}", s.id, s.action, s.agent);
                for l in &s.output {
                    println!("    {l}");
                }
            }
        }
    }
    println!(
        "{} steps: {} succeeded, {} failed",
        v.steps_total, v.steps_succeeded, v.steps_failed
    );
}

/// Prints plans.
pub fn print_plans(plans: &[pb::PlanInfo], format: Format) {
    let views: Vec<PlanView> = plans.iter().map(plan_view).collect();
    if format == Format::Json {
        let slim: Vec<serde_json::Value> = views
            .iter()
            .map(|v| {
                serde_json::json!({
                    "id": v.id, "recipe": v.recipe, "state": v.state, "origin": v.origin,
                    "created_at": v.created_at, "created_by": v.created_by, "message": v.message,
                    "steps_total": v.steps_total, "steps_succeeded": v.steps_succeeded, "steps_failed": v.steps_failed,
                })
            })
            .collect();
        print_json(&slim);
        return;
    }
    let mut tb = table(&["ID", "RECIPE", "STATE", "STEPS", "CREATED", "BY", "MESSAGE"]);
    for v in views {
        tb.add_row(vec![
            Cell::new(&v.id),
            Cell::new(&v.recipe),
            state_cell(&v.state),
            Cell::new(format!(
                "{}/{} ({} failed)",
                v.steps_succeeded, v.steps_total, v.steps_failed
            )),
            Cell::new(&v.created_at),
            Cell::new(&v.created_by),
            Cell::new(&v.message),
        ]);
    }
    println!("{tb}");
}

/// Prints policies.
pub fn print_policies(policies: &[pb::PolicyInfo], format: Format) {
    #[derive(Serialize)]
    struct V<'a> {
        role: &'a str,
        renew_within: String,
        window: &'a str,
        auto_approve: bool,
        max_parallel: u32,
    }
    let views: Vec<V<'_>> = policies
        .iter()
        .map(|p| V {
            role: &p.role,
            renew_within: humantime::format_duration(std::time::Duration::from_secs(
                p.renew_within_secs,
            ))
            .to_string(),
            window: &p.window,
            auto_approve: p.auto_approve,
            max_parallel: p.max_parallel,
        })
        .collect();
    if format == Format::Json {
        print_json(&views);
        return;
    }
    let mut tb = table(&[
        "ROLE",
        "RENEW WITHIN",
        "WINDOW",
        "AUTO APPROVE",
        "MAX PARALLEL",
    ]);
    for v in views {
        tb.add_row(vec![
            v.role.to_owned(),
            v.renew_within,
            v.window.to_owned(),
            v.auto_approve.to_string(),
            v.max_parallel.to_string(),
        ]);
    }
    println!("{tb}");
}

/// Follows a plan: a progress bar per stage, each step's transitions, optionally its output.
pub struct PlanWatcher {
    with_output: bool,
    seen_states: BTreeMap<String, String>,
    seen_output: BTreeMap<String, usize>,
    last_bar: String,
    last: Option<pb::PlanInfo>,
}

impl PlanWatcher {
    /// A new watcher.
    pub fn new(with_output: bool) -> Self {
        PlanWatcher {
            with_output,
            seen_states: BTreeMap::new(),
            seen_output: BTreeMap::new(),
            last_bar: String::new(),
            last: None,
        }
    }

    /// Prints what changed.
    pub fn update(&mut self, p: &pb::PlanInfo) {
        for s in &p.steps {
            if self.with_output {
                let seen = self.seen_output.entry(s.id.clone()).or_insert(0);
                for l in s.output.iter().skip(*seen) {
                    println!("    [{} {}] {l}", s.agent_name, s.id);
                }
                *seen = s.output.len();
            }
            if self.seen_states.get(&s.id) != Some(&s.state) {
                self.seen_states.insert(s.id.clone(), s.state.clone());
                if s.state != "pending" {
                    println!(
                        "{} {:<11} {:<14} {:<16} {}{}",
                        format_time(now()),
                        s.state,
                        s.agent_name,
                        s.action,
                        s.name,
                        if s.message.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", s.message)
                        }
                    );
                }
            }
        }
        let mut stages: Vec<(String, usize, usize)> = Vec::new();
        for s in &p.steps {
            match stages.iter_mut().find(|(n, _, _)| *n == s.stage) {
                Some(e) => {
                    e.2 += 1;
                    if s.state == "succeeded" {
                        e.1 += 1;
                    }
                }
                None => stages.push((s.stage.clone(), usize::from(s.state == "succeeded"), 1)),
            }
        }
        let bars: Vec<String> = stages
            .iter()
            .map(|(n, done, total)| {
                let width = 10;
                let filled = done * width / (*total).max(1);
                format!(
                    "{n} [{}{}] {done}/{total}",
                    "#".repeat(filled),
                    "-".repeat(width - filled)
                )
            })
            .collect();
        let bar = format!(
            "  plan {} {}: {}{}",
            p.id,
            p.state,
            bars.join("  "),
            if p.message.is_empty() {
                String::new()
            } else {
                format!("  ({})", p.message)
            }
        );
        if bar != self.last_bar {
            println!("{bar}");
            self.last_bar = bar;
        }
        self.last = Some(p.clone());
    }

    /// Final summary.
    pub fn finish(&self) {
        if let Some(p) = &self.last {
            let ok = p.steps.iter().filter(|s| s.state == "succeeded").count();
            println!(
                "plan {} finished {}: {ok}/{} steps succeeded",
                p.id,
                p.state,
                p.steps.len()
            );
        }
    }
}

/// `inventory --compare BEFORE.json`: what changed since an earlier `inventory -o json`, place by
/// place (agent + location): the certificate that was there, the one there now.
pub fn print_comparison(
    before_path: &std::path::Path,
    now_list: &pb::InventoryList,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(before_path)
        .with_context(|| format!("reading {}", before_path.display()))?;
    let before: Vec<serde_json::Value> = serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: not the output of `certfleet inventory -o json`",
            before_path.display()
        )
    })?;
    let now = certfleet_common::model::now();
    let place = |agent: &str, loc: &serde_json::Value| {
        let l: Location = serde_json::from_value(loc.clone()).unwrap_or_default();
        format!("{agent}\t{}", l.describe())
    };
    let mut was: BTreeMap<String, (String, String, i64, String)> = BTreeMap::new();
    for item in &before {
        for l in item["locations"].as_array().into_iter().flatten() {
            was.insert(
                place(l["agent"].as_str().unwrap_or(""), l),
                (
                    item["fingerprint_sha256"].as_str().unwrap_or("").to_owned(),
                    item["role"].as_str().unwrap_or("").to_owned(),
                    item["days_left"].as_i64().unwrap_or(0),
                    item["not_after"].as_str().unwrap_or("").to_owned(),
                ),
            );
        }
    }
    let mut tb = table(&["ROLE", "AGENT", "WHERE", "BEFORE", "AFTER"]);
    let mut changed = 0;
    for item in &now_list.items {
        let v = inventory_view(item, now);
        for s in &v.locations {
            let key = format!("{}\t{}", s.agent, s.location.describe());
            let Some((fp, _role, days, na)) = was.get(&key) else {
                continue;
            };
            if *fp == v.fingerprint_sha256 {
                continue;
            }
            changed += 1;
            let before_cell = Cell::new(format!(
                "{na} ({})",
                if *days < 0 {
                    format!("expired {}d ago", -days)
                } else {
                    format!("{days}d")
                }
            ));
            tb.add_row(vec![
                Cell::new(&v.role),
                Cell::new(&s.agent),
                Cell::new(s.location.describe()),
                if *days < 0 {
                    before_cell.fg(Color::Red)
                } else {
                    before_cell.fg(Color::Yellow)
                },
                days_cell(&v).set_alignment(comfy_table::CellAlignment::Left),
            ]);
        }
    }
    println!("{tb}");
    println!(
        "{changed} place(s) now hold a different certificate than in {}",
        before_path.display()
    );
    Ok(())
}

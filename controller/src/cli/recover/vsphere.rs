//! `certfleet recover vsphere --domain D | --agent A`: a vCenter whose certificates have already
//! expired (the UI is dead, logins fail), brought back with the existing vSphere recipes in the
//! order VMware's GSS article and `shared/reference/vsphere.md` §9 give:
//!
//! 1. `vsphere-sts` when the STS signing certificate expired (or is due within `--within`):
//!    first, because while it is expired no login works and replacing the other certificates
//!    fails too (§4.2). Replication gate on every node of the domain (it binds as the SSO
//!    administrator, so a wrong SSO password stops here, before anything changed), the
//!    fixsts.sh/vCert LDAP replacement on one node, then every vCenter of the domain restarted
//!    one at a time and checked;
//! 2. `vsphere-machine-ssl` on each node whose Machine SSL certificate is due: new VMCA
//!    certificate, the follow-ups (Lookup Service trust, `vpx_ext` thumbprint, Auto Deploy),
//!    restart, the endpoint checked, then the replaced entries leave `BACKUP_STORE`;
//! 3. `vsphere-solution-users` on each node with a due solution user (wcp and hvc included,
//!    seed 000): vmdir first, VECS second, extension thumbprints, restart and check.
//!
//! Only what is due is touched; a step with nothing due is skipped and says so. The exception
//! is a VMCA root that expired or is due: that node gets certificate-manager option 8's "reset
//! all" (§9.4). `vsphere-vmca-root` first (a new root, given to VMCA, in `TRUSTED_ROOTS`), then
//! STS (when that root signed it, on that node), Machine SSL and every solution user issued
//! again from the new root whatever their expiry, since a certificate ends with the root that
//! signed it. Before any plan the inventory is read and the command stops, changing nothing,
//! on what it must not handle: an expired root in `TRUSTED_ROOTS` that is not the VMCA root (a
//! custom CA, which must issue its new certificate first) and that the node's certificates
//! chain to, more than one STS `TenantCredential` in vmdir (seed 001's "Amount of tenant
//! credentials" check; `--allow-several-tenant-credentials` after looking), and a node of the
//! domain that is not connected (every vCenter of the domain restarts). Such a stop exits 3
//! (refused), like a refusal by the controller: nothing was tried.
//! At the end the agents rescan and the inventory must show nothing due any more.
//!
//! Like `recover ovirt-hosts`, each plan runs to its end before the next is built; the first
//! failed plan stops the recovery (exit 4) with its id; the plans are audited like any other;
//! `--dry-run` builds and prints each plan as a dry run; the wall time is printed at the end.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use certfleet_common::model::{format_time, now};
use certfleet_common::proto as pb;
use clap::Args;

use super::{Outcome, Stage};
use crate::cli::CliError;
use crate::cli::args::{MAX_HORIZON, duration_in, secs};
use crate::cli::conn::Conn;
use crate::cli::output::OutputArgs;
use crate::plan::recipes::vsphere::sso_domain_of;

/// How long the final check waits for the agents' rescans to show the new certificates.
const VERIFY_WAIT: Duration = Duration::from_secs(60);

/// `certfleet recover vsphere`
#[derive(Args)]
#[command(group = clap::ArgGroup::new("scope").required(true).args(["domain", "agent"]))]
pub struct VsphereArgs {
    /// SSO domain (e.g. vsphere.local) as the agents' inventory shows it (vmdir tenant of the
    /// STS signing certificate): every vCenter agent of the domain.
    #[arg(long)]
    pub domain: Option<String>,
    /// One vCenter agent (name or id); the domain-wide STS step still restarts every node of
    /// its domain.
    #[arg(long)]
    pub agent: Option<String>,
    /// Certificates expiring within this long count as expired.
    #[arg(long, default_value = "7d", value_parser = duration_in(secs(1), MAX_HORIZON))]
    pub within: Duration,
    /// Go on although vmdir holds more than one STS TenantCredential (the STS step deletes them
    /// all and writes one; check first which one vCenter signs with, e.g. checksts.py).
    #[arg(long)]
    pub allow_several_tenant_credentials: bool,
    /// Build and print every plan as a dry run; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// One certificate as one node reported it, at one place.
#[derive(Clone, Debug, Default)]
struct Seen {
    role: String,
    subject: String,
    fingerprint: String,
    not_after: i64,
    is_ca: bool,
    subject_key_id: String,
    authority_key_id: String,
    /// `kind` and `path` of the place (`vmdir` and the entry's DN, `vecs`, `file`, …).
    kind: String,
    path: String,
}

/// A vCenter agent and what it reported.
#[derive(Clone, Debug, Default)]
struct Node {
    id: String,
    name: String,
    connected: bool,
    certs: Vec<Seen>,
}

impl Node {
    /// `(domain name, domain key)`, as the vSphere recipes group nodes.
    fn domain(&self) -> (String, String) {
        let sts: Vec<&Seen> = self
            .certs
            .iter()
            .filter(|c| c.role.starts_with("vsphere.sts_signing"))
            .collect();
        sso_domain_of(
            &self.name,
            sts.iter().map(|c| c.fingerprint.as_str()),
            sts.iter()
                .filter(|c| c.kind == "vmdir")
                .map(|c| c.path.as_str()),
        )
    }
}

/// What the inventory says must be done, and what stops the recovery.
#[derive(Debug, Default, PartialEq, Eq)]
struct Assessment {
    /// Due STS signing certificates (domain-wide; one line each).
    sts: Vec<String>,
    /// Due Machine SSL certificates, one line per node.
    machine_ssl: Vec<String>,
    /// Due solution-user certificates, one line per node and user.
    solution_users: Vec<String>,
    /// Due VMCA roots, one line per node: "reset all" there.
    vmca_roots: Vec<String>,
    /// Ids of the nodes whose VMCA root is due: everything their VMCA signed is issued again.
    reset: BTreeSet<String>,
    /// Name of the node whose due VMCA root signed the STS signing certificate, when one did:
    /// the STS replacement runs there, after the new root.
    sts_reset_node: Option<String>,
    /// ESXi host certificates the reset roots signed (follow-up after the recovery).
    esxi_under_reset: usize,
    /// Why the recovery must not start (nothing is changed).
    blockers: Vec<String>,
}

impl Assessment {
    fn nothing(&self) -> bool {
        self.sts.is_empty()
            && self.machine_ssl.is_empty()
            && self.solution_users.is_empty()
            && self.vmca_roots.is_empty()
    }
}

fn when(not_after: i64, now: i64) -> String {
    if not_after <= now {
        format!("EXPIRED {}", format_time(not_after))
    } else {
        format!("expires {}", format_time(not_after))
    }
}

/// Whether `c`, reported by `n`, was signed by one of the VMCA roots being reset
/// (`reset_skis`: subject key id → node name). Without an authority key id a certificate of a
/// reset node counts as signed by its root (VMCA always sets it; a certificate without it is
/// issued again rather than left with a dead root).
fn signed_by_reset_root(reset_skis: &BTreeMap<String, String>, n: &Node, c: &Seen) -> bool {
    if c.is_ca {
        return false;
    }
    if c.authority_key_id.is_empty() {
        return reset_skis.values().any(|name| *name == n.name);
    }
    reset_skis.contains_key(&c.authority_key_id)
}

/// Reads what `targets` (and, for the domain-wide parts, every node of their `domain`) report.
/// `horizon` = now + `--within`.
fn assess(
    targets: &[&Node],
    domain: &[&Node],
    now: i64,
    horizon: i64,
    allow_several: bool,
) -> Assessment {
    let mut a = Assessment::default();
    let due = |c: &Seen| c.not_after <= horizon;
    let mut seen_sts = BTreeSet::new();
    let mut blocked_roots = BTreeSet::new();
    // The VMCA roots due on the targets (subject key id → node): "reset all" on those nodes,
    // and everything those roots signed is issued again, due or not.
    let mut reset_skis: BTreeMap<String, String> = BTreeMap::new();
    for n in targets {
        for c in &n.certs {
            if c.role == "vsphere.vmca_root" && c.is_ca && due(c) {
                if !a.reset.contains(&n.id) {
                    a.vmca_roots.push(format!(
                        "{}: VMCA root {} {} — reset all: a new root, then STS, Machine SSL and \
                         solution users issued again from it",
                        n.name,
                        c.subject,
                        when(c.not_after, now)
                    ));
                }
                a.reset.insert(n.id.clone());
                if !c.subject_key_id.is_empty() {
                    reset_skis.insert(c.subject_key_id.clone(), n.name.clone());
                }
            }
        }
    }
    let under_reset = |n: &Node, c: &Seen| signed_by_reset_root(&reset_skis, n, c);
    for n in targets {
        // Each certificate once per node (a certificate is reported once per place).
        let mut certs: BTreeMap<(&str, &str), &Seen> = BTreeMap::new();
        for c in &n.certs {
            certs.entry((&c.role, &c.fingerprint)).or_insert(c);
        }
        let leaves: Vec<&Seen> = certs
            .values()
            .copied()
            .filter(|c| {
                c.role == "vsphere.machine_ssl"
                    || c.role.starts_with("vsphere.solution_user.")
                    || c.role.starts_with("vsphere.sts_signing")
            })
            .collect();
        for c in certs.values().copied() {
            let reissue = under_reset(n, c);
            let why = |c: &Seen| {
                if due(c) {
                    when(c.not_after, now)
                } else {
                    format!("{} (signed by the old VMCA root)", when(c.not_after, now))
                }
            };
            if c.role.starts_with("vsphere.sts_signing") && (due(c) || reissue) {
                if seen_sts.insert(c.fingerprint.clone()) {
                    a.sts
                        .push(format!("{}: STS signing {} {}", n.name, c.subject, why(c)));
                    if reissue {
                        a.sts_reset_node = reset_skis.get(&c.authority_key_id).cloned();
                    }
                }
            } else if c.role == "vsphere.machine_ssl" && (due(c) || reissue) {
                a.machine_ssl
                    .push(format!("{}: Machine SSL {} {}", n.name, c.subject, why(c)));
            } else if let Some(user) = c.role.strip_prefix("vsphere.solution_user.")
                && (due(c) || reissue)
            {
                a.solution_users
                    .push(format!("{}: solution user {user} {}", n.name, why(c)));
            } else if c.role == "vsphere.esxi_host" && reissue {
                a.esxi_under_reset += 1;
            }
            // A CA in TRUSTED_ROOTS this node's certificates chain to that is not this node's
            // VMCA root (a custom or enterprise CA): renewing leaves under it is pointless
            // (they end with it) and certfleet cannot issue that CA's new certificate.
            let custom_root = c.is_ca
                && due(c)
                && c.role == "vsphere.trusted_root"
                && !c.subject_key_id.is_empty()
                && !reset_skis.contains_key(&c.subject_key_id)
                && leaves
                    .iter()
                    .any(|l| l.authority_key_id == c.subject_key_id);
            if custom_root && blocked_roots.insert(c.fingerprint.clone()) {
                a.blockers.push(format!(
                    "{}: the root {} in TRUSTED_ROOTS that signs this vCenter's certificates {} \
                     is not its VMCA root (a custom CA): that CA must issue a new certificate \
                     first, then the certificates it signed are replaced with ones it issues \
                     (reference §9.3); certfleet renews only what VMCA signs",
                    n.name,
                    c.subject,
                    when(c.not_after, now)
                ));
            }
        }
    }
    if !a.sts.is_empty() {
        for n in domain {
            let creds: BTreeSet<&str> = n
                .certs
                .iter()
                .filter(|c| c.role.starts_with("vsphere.sts_signing") && c.kind == "vmdir")
                .filter(|c| {
                    c.path
                        .to_ascii_lowercase()
                        .starts_with("cn=tenantcredential-")
                })
                .map(|c| c.path.split(',').next().unwrap_or(&c.path))
                .collect();
            if creds.len() > 1 && !allow_several {
                a.blockers.push(format!(
                    "{}: vmdir holds {} STS tenant credentials ({}); fixsts.sh prints \"Amount \
                     of tenant credentials: 1\" on a sound domain (seed 001), more means an \
                     earlier replacement was interrupted or another tool added one. The STS \
                     step deletes them all and writes one: check which one vCenter signs with \
                     (checksts.py), then run again with --allow-several-tenant-credentials",
                    n.name,
                    creds.len(),
                    creds.iter().copied().collect::<Vec<_>>().join(", ")
                ));
                break;
            }
        }
    }
    let down: Vec<&str> = domain
        .iter()
        .filter(|n| !n.connected)
        .map(|n| n.name.as_str())
        .collect();
    if !down.is_empty() && !a.nothing() {
        a.blockers.push(format!(
            "not connected: {} (every vCenter of the domain is restarted and checked; start \
             its agent first)",
            down.join(", ")
        ));
    }
    a
}

/// The vCenter agents and their certificates (one inventory query, page by page).
async fn nodes(conn: &Conn) -> anyhow::Result<Vec<Node>> {
    let mut c = conn.client();
    let e = |s| conn.explain(s);
    let agents = c
        .list_agents(pb::Empty {})
        .await
        .map_err(e)?
        .into_inner()
        .agents;
    let mut nodes: BTreeMap<String, Node> = agents
        .iter()
        .filter(|a| a.platforms.iter().any(|p| p == "vsphere"))
        .map(|a| {
            (
                a.id.clone(),
                Node {
                    id: a.id.clone(),
                    name: a.name.clone(),
                    connected: a.connected,
                    certs: Vec::new(),
                },
            )
        })
        .collect();
    let mut q = pb::InventoryQuery {
        platform: "vsphere".into(),
        page_size: 2_000,
        ..Default::default()
    };
    loop {
        let page = c.inventory(q.clone()).await.map_err(e)?.into_inner();
        for item in page.items {
            let Some(cert) = item.certificate else {
                continue;
            };
            for s in item.seen {
                let Some(n) = nodes.get_mut(&s.agent_id) else {
                    continue;
                };
                let loc = s.location.unwrap_or_default();
                n.certs.push(Seen {
                    role: cert.role.clone(),
                    subject: cert.subject.clone(),
                    fingerprint: cert.fingerprint_sha256.clone(),
                    not_after: cert.not_after,
                    is_ca: cert.is_ca,
                    subject_key_id: cert.subject_key_id.clone(),
                    authority_key_id: cert.authority_key_id.clone(),
                    kind: loc.kind,
                    path: loc.path,
                });
            }
        }
        if page.next_page_token.is_empty() {
            break;
        }
        q.page_token = page.next_page_token;
    }
    let mut v: Vec<Node> = nodes.into_values().collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(v)
}

/// `domain name → node names`, for the "unknown domain" message.
fn known_domains(nodes: &[Node]) -> String {
    let mut m: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for n in nodes {
        m.entry(n.domain().0).or_default().push(&n.name);
    }
    if m.is_empty() {
        return "none (no agent runs the vsphere collector)".into();
    }
    m.iter()
        .map(|(d, ns)| format!("{d} ({})", ns.join(", ")))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The nodes to recover and every node of their SSO domain(s), from the flags.
fn select<'a>(
    nodes: &'a [Node],
    args: &VsphereArgs,
) -> Result<(Vec<&'a Node>, Vec<&'a Node>), CliError> {
    let targets: Vec<&Node> = match (&args.domain, &args.agent) {
        (Some(d), _) => {
            let v: Vec<&Node> = nodes
                .iter()
                .filter(|n| n.domain().0.eq_ignore_ascii_case(d))
                .collect();
            if v.is_empty() {
                return Err(CliError::Usage(format!(
                    "no vCenter agent in SSO domain {d:?}; known domains: {}",
                    known_domains(nodes)
                )));
            }
            v
        }
        (None, Some(a)) => match nodes.iter().find(|n| &n.name == a || &n.id == a) {
            Some(n) => vec![n],
            None => {
                return Err(CliError::Usage(format!(
                    "no vCenter agent {a:?} (agents running the vsphere collector: {})",
                    if nodes.is_empty() {
                        "none".to_owned()
                    } else {
                        nodes
                            .iter()
                            .map(|n| n.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                )));
            }
        },
        (None, None) => {
            return Err(CliError::Usage("give --domain or --agent".into()));
        }
    };
    let keys: BTreeSet<String> = targets.iter().map(|n| n.domain().1).collect();
    let domain: Vec<&Node> = nodes
        .iter()
        .filter(|n| keys.contains(&n.domain().1))
        .collect();
    Ok((targets, domain))
}

/// Runs `certfleet recover vsphere`.
pub async fn run(conn: &Conn, args: &VsphereArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let all = nodes(conn).await?;
    let (targets, domain) = select(&all, args)?;
    let scope = match (&args.domain, &args.agent) {
        (Some(d), _) => format!("--domain {d}"),
        (_, Some(a)) => format!("--agent {a}"),
        _ => String::new(),
    };
    let t = now();
    let within = args.within.as_secs();
    let a = assess(
        &targets,
        &domain,
        t,
        t.saturating_add(i64::try_from(within).unwrap_or(i64::MAX)),
        args.allow_several_tenant_credentials,
    );
    let names = |v: &[&Node]| {
        v.iter()
            .map(|n| n.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let domain_names: BTreeSet<String> = targets.iter().map(|n| n.domain().0).collect();
    eprintln!(
        "recover vsphere {scope}: node(s) {} (SSO domain {}: {}); expired or due within {}:",
        names(&targets),
        domain_names.into_iter().collect::<Vec<_>>().join(", "),
        names(&domain),
        humantime::format_duration(args.within)
    );
    for line in a
        .vmca_roots
        .iter()
        .chain(&a.sts)
        .chain(&a.machine_ssl)
        .chain(&a.solution_users)
    {
        eprintln!("  {line}");
    }
    if !a.blockers.is_empty() {
        for b in &a.blockers {
            eprintln!("  STOP: {b}");
        }
        return Err(CliError::Refused(format!(
            "recover vsphere {scope}: not started, nothing changed: {}",
            a.blockers.join("; ")
        ))
        .into());
    }
    if a.nothing() {
        eprintln!(
            "recover vsphere {scope}: nothing expired or due within {}; nothing to recover",
            humantime::format_duration(args.within)
        );
        return Ok(());
    }
    let skip = |v: &Vec<String>| {
        if v.is_empty() {
            " (nothing due: skipped)"
        } else {
            ""
        }
    };
    let mut n = 0;
    let mut line = |text: String| {
        n += 1;
        eprintln!("  {n}. {text}");
    };
    if !a.reset.is_empty() {
        line(
            "vsphere-vmca-root: new VMCA root (certool --genselfcacert, --rootca), published \
             to TRUSTED_ROOTS, node by node; then everything below is issued from it"
                .into(),
        );
    }
    line(format!(
        "vsphere-sts: replication gate on every node, fixsts.sh replacement once, every node restarted{}",
        skip(&a.sts)
    ));
    line(format!(
        "vsphere-machine-ssl: node by node, follow-ups, restart, endpoint checked, BACKUP_STORE cleaned{}",
        skip(&a.machine_ssl)
    ));
    line(format!(
        "vsphere-solution-users: node by node (wcp, hvc included), restart, checked{}",
        skip(&a.solution_users)
    ));
    for stage in stages(&targets, &a, args) {
        let (label, note) = (&stage.label, &stage.note);
        match stage.stage.run(conn, args.dry_run, &args.output).await? {
            Outcome::Nothing(why) => eprintln!("{label}: {why}"),
            Outcome::Planned(id) => eprintln!("{label}: plan {id} (dry run){note}"),
            Outcome::Done(id) => eprintln!("{label}: plan {id} succeeded{note}"),
        }
    }
    if !args.dry_run {
        verify(conn, args, &targets).await?;
    }
    if a.esxi_under_reset > 0 {
        eprintln!(
            "then: {} ESXi host certificate(s) were signed by the old VMCA root; in VMCA mode \
             refresh them (certfleet plan create esxi-hosts --agent <vCenter agent>), reference \
             §9.4",
            a.esxi_under_reset
        );
    }
    if !a.reset.is_empty() {
        eprintln!(
            "note: the old VMCA root stays in TRUSTED_ROOTS and vmdir while anything may still \
             present a certificate it signed; remove it afterwards (dir-cli trustedcert \
             unpublish, vecs-cli entry delete --store TRUSTED_ROOTS), reference §9.5"
        );
    }
    eprintln!(
        "recover vsphere {scope}: {} in {:.1}s wall time",
        if args.dry_run { "planned" } else { "done" },
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A plan of the recovery and how it is announced.
struct Planned {
    /// `step N: RECIPE`.
    label: String,
    /// Said after the plan id (` (issued from the new root)` or nothing).
    note: String,
    stage: Stage,
}

/// The plans, in order. Nodes whose VMCA root is reset get a new root first, then every
/// certificate their VMCA signed is issued again whatever its expiry (`within` 0 = everything
/// in scope; the STS replacement runs on the node whose root signed it); the other targets
/// get what is due within `--within`.
fn stages(targets: &[&Node], a: &Assessment, args: &VsphereArgs) -> Vec<Planned> {
    let reset: Vec<String> = targets
        .iter()
        .filter(|n| a.reset.contains(&n.id))
        .map(|n| n.id.clone())
        .collect();
    let rest: Vec<String> = targets
        .iter()
        .filter(|n| !a.reset.contains(&n.id))
        .map(|n| n.id.clone())
        .collect();
    let stage =
        |recipe: &'static str, agents: &[String], within: Duration, params: Vec<pb::Label>| Stage {
            recipe,
            agents: agents.to_vec(),
            within,
            max_parallel: 1,
            params,
        };
    let mut out = Vec::new();
    let mut push = |note: &str, s: Stage| {
        let n = out.len() + 1;
        out.push(Planned {
            label: format!("step {n}: {}", s.recipe),
            note: note.to_owned(),
            stage: s,
        });
    };
    let everything = Duration::ZERO;
    if !reset.is_empty() {
        push("", stage("vsphere-vmca-root", &reset, args.within, vec![]));
    }
    if !a.sts.is_empty() {
        match &a.sts_reset_node {
            Some(node) => push(
                " (issued from the new root)",
                stage(
                    "vsphere-sts",
                    &reset,
                    everything,
                    vec![pb::Label {
                        key: "node".into(),
                        value: node.clone(),
                    }],
                ),
            ),
            None => push(
                "",
                stage(
                    "vsphere-sts",
                    &targets.iter().map(|n| n.id.clone()).collect::<Vec<_>>(),
                    args.within,
                    vec![],
                ),
            ),
        }
    }
    for (recipe, due) in [
        ("vsphere-machine-ssl", &a.machine_ssl),
        ("vsphere-solution-users", &a.solution_users),
    ] {
        if due.is_empty() {
            continue;
        }
        if !reset.is_empty() {
            push(
                " (issued from the new root)",
                stage(recipe, &reset, everything, vec![]),
            );
        }
        if !rest.is_empty() {
            push("", stage(recipe, &rest, args.within, vec![]));
        }
    }
    out
}

/// After the plans: every node rescans; the inventory must show no STS, Machine SSL or
/// solution-user certificate due within `--within` any more.
async fn verify(conn: &Conn, args: &VsphereArgs, targets: &[&Node]) -> anyhow::Result<()> {
    let mut c = conn.client();
    for n in targets {
        c.rescan(pb::IdRequest { id: n.id.clone() })
            .await
            .map_err(|s| conn.explain(s))?;
    }
    let deadline = Instant::now() + VERIFY_WAIT;
    loop {
        let all = nodes(conn).await?;
        let ids: BTreeSet<&str> = targets.iter().map(|n| n.id.as_str()).collect();
        let now_targets: Vec<&Node> = all.iter().filter(|n| ids.contains(n.id.as_str())).collect();
        let t = now();
        let horizon = t.saturating_add(i64::try_from(args.within.as_secs()).unwrap_or(i64::MAX));
        // The domain-wide checks (tenant credentials, connections) were done before.
        let a = assess(&now_targets, &[], t, horizon, true);
        if a.nothing() {
            eprintln!(
                "verified: the inventory of {} shows no STS, Machine SSL or solution-user \
                 certificate due within {}",
                now_targets
                    .iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                humantime::format_duration(args.within)
            );
            return Ok(());
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "recover vsphere: every plan succeeded, but after {}s the inventory still shows: {}",
                VERIFY_WAIT.as_secs(),
                a.sts
                    .iter()
                    .chain(&a.machine_ssl)
                    .chain(&a.solution_users)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; ")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TENANT: &str =
        "cn=vsphere.local,cn=Tenants,cn=IdentityManager,cn=Services,dc=vsphere,dc=local";

    fn cert(role: &str, fp: &str, not_after: i64) -> Seen {
        Seen {
            role: role.into(),
            subject: format!("CN={fp}"),
            fingerprint: fp.into(),
            not_after,
            kind: "vecs".into(),
            ..Default::default()
        }
    }

    fn sts(fp: &str, cred: u32, not_after: i64) -> Seen {
        Seen {
            kind: "vmdir".into(),
            path: format!("cn=TenantCredential-{cred},{TENANT}"),
            authority_key_id: "root".into(),
            ..cert("vsphere.sts_signing", fp, not_after)
        }
    }

    fn root(role: &str, not_after: i64) -> Seen {
        Seen {
            is_ca: true,
            subject_key_id: "root".into(),
            ..cert(role, "rootfp", not_after)
        }
    }

    fn node(name: &str, certs: Vec<Seen>) -> Node {
        Node {
            id: format!("id-{name}"),
            name: name.into(),
            connected: true,
            certs,
        }
    }

    const NOW: i64 = 1_000_000;
    const DAY: i64 = 86_400;

    fn expired_node(name: &str) -> Node {
        node(
            name,
            vec![
                sts("sts1", 1, NOW - DAY),
                Seen {
                    kind: "vmdir".into(),
                    path: format!("cn=TrustedCertChain-1,cn=TrustedCertificateChains,{TENANT}"),
                    ..sts("sts1", 1, NOW - DAY)
                },
                Seen {
                    authority_key_id: "root".into(),
                    ..cert("vsphere.machine_ssl", &format!("{name}-ms"), NOW - DAY)
                },
                cert(
                    "vsphere.solution_user.wcp",
                    &format!("{name}-wcp"),
                    NOW - 2 * DAY,
                ),
                cert(
                    "vsphere.solution_user.vpxd",
                    &format!("{name}-vpxd"),
                    NOW + 400 * DAY,
                ),
                cert("vsphere.backup", &format!("{name}-bkp"), NOW - 50 * DAY),
                root("vsphere.vmca_root", NOW + 3000 * DAY),
                root("vsphere.trusted_root", NOW + 3000 * DAY),
            ],
        )
    }

    #[test]
    fn picks_only_what_is_due_sts_once_per_domain() {
        let (a, b) = (expired_node("vc1"), expired_node("vc2"));
        let r = assess(&[&a, &b], &[&a, &b], NOW, NOW + 7 * DAY, false);
        assert!(r.blockers.is_empty(), "{r:?}");
        assert_eq!(r.sts.len(), 1, "{r:?}");
        assert!(r.sts[0].contains("EXPIRED"), "{r:?}");
        assert_eq!(r.machine_ssl.len(), 2);
        assert_eq!(
            r.solution_users,
            [
                format!("vc1: solution user wcp {}", when(NOW - 2 * DAY, NOW)),
                format!("vc2: solution user wcp {}", when(NOW - 2 * DAY, NOW)),
            ]
        );
        // Nothing due: nothing to do.
        let fine = node(
            "vc3",
            vec![
                sts("s", 1, NOW + 900 * DAY),
                cert("vsphere.machine_ssl", "m", NOW + 30 * DAY),
            ],
        );
        assert!(assess(&[&fine], &[&fine], NOW, NOW + 7 * DAY, false).nothing());
        // ... but within 60 days the Machine SSL is.
        let r = assess(&[&fine], &[&fine], NOW, NOW + 60 * DAY, false);
        assert_eq!(r.machine_ssl.len(), 1);
        assert!(r.machine_ssl[0].contains("expires"), "{r:?}");
    }

    #[test]
    fn an_expired_vmca_root_resets_all_and_a_custom_root_it_chains_to_stops_everything() {
        let mut n = expired_node("vc1");
        for c in &mut n.certs {
            if c.role == "vsphere.vmca_root" {
                c.not_after = NOW - DAY;
            }
        }
        let r = assess(&[&n], &[&n], NOW, NOW + 7 * DAY, false);
        assert!(r.blockers.is_empty(), "{r:?}");
        assert_eq!(r.reset, BTreeSet::from(["id-vc1".to_owned()]), "{r:?}");
        assert_eq!(r.vmca_roots.len(), 1, "{r:?}");
        assert!(r.vmca_roots[0].contains("reset all"), "{r:?}");
        // Everything the old root signed is issued again, due or not: the STS (on the node
        // whose root signed it), Machine SSL, and both solution users (vpxd has 400 days
        // left); the backup entry is not touched.
        assert_eq!(r.sts.len(), 1, "{r:?}");
        assert_eq!(r.sts_reset_node.as_deref(), Some("vc1"), "{r:?}");
        assert_eq!(r.machine_ssl.len(), 1, "{r:?}");
        assert_eq!(r.solution_users.len(), 2, "{r:?}");
        assert!(
            r.solution_users
                .iter()
                .any(|l| l.contains("vpxd") && l.contains("signed by the old VMCA root")),
            "{r:?}"
        );
        let plans = stages(
            &[&n],
            &r,
            &VsphereArgs {
                domain: Some("vsphere.local".into()),
                agent: None,
                within: Duration::from_secs(7 * 86_400),
                allow_several_tenant_credentials: false,
                dry_run: true,
                output: OutputArgs::TABLE,
            },
        );
        let order: Vec<(&str, u64)> = plans
            .iter()
            .map(|p| (p.stage.recipe, p.stage.within.as_secs()))
            .collect();
        assert_eq!(
            order,
            [
                ("vsphere-vmca-root", 7 * 86_400),
                ("vsphere-sts", 0),
                ("vsphere-machine-ssl", 0),
                ("vsphere-solution-users", 0)
            ],
            "the new root first, then everything issued from it, whatever its expiry"
        );
        assert_eq!(plans[1].stage.params[0].value, "vc1");
        // An expired root in TRUSTED_ROOTS that is not the VMCA root (a custom CA), with a
        // leaf chaining to it: certfleet cannot issue that CA's certificate, so it stops.
        let mut n = expired_node("vc1");
        n.certs.retain(|c| c.role != "vsphere.vmca_root");
        for c in &mut n.certs {
            if c.role == "vsphere.trusted_root" {
                c.not_after = NOW - DAY;
            }
        }
        let r = assess(&[&n], &[&n], NOW, NOW + 7 * DAY, false);
        assert_eq!(r.blockers.len(), 1, "{r:?}");
        assert!(r.blockers[0].contains("not its VMCA root"), "{r:?}");
        assert!(r.reset.is_empty(), "{r:?}");
        // An expired CA in TRUSTED_ROOTS that nothing chains to is only an alarm, not a stop.
        for c in &mut n.certs {
            if c.role == "vsphere.trusted_root" {
                c.subject_key_id = "old-enterprise-ca".into();
            }
        }
        assert!(
            assess(&[&n], &[&n], NOW, NOW + 7 * DAY, false)
                .blockers
                .is_empty()
        );
    }

    #[test]
    fn several_tenant_credentials_stop_unless_allowed() {
        let mut n = expired_node("vc1");
        n.certs.push(sts("sts1", 2, NOW - DAY));
        let r = assess(&[&n], &[&n], NOW, NOW + 7 * DAY, false);
        assert_eq!(r.blockers.len(), 1, "{r:?}");
        assert!(
            r.blockers[0].contains("2 STS tenant credentials")
                && r.blockers[0].contains("cn=TenantCredential-1, cn=TenantCredential-2")
                && r.blockers[0].contains("--allow-several-tenant-credentials"),
            "{r:?}"
        );
        assert!(
            assess(&[&n], &[&n], NOW, NOW + 7 * DAY, true)
                .blockers
                .is_empty()
        );
        // With the STS not due, the extra credential does not matter to this recovery.
        for c in &mut n.certs {
            if c.role == "vsphere.sts_signing" {
                c.not_after = NOW + 900 * DAY;
            }
        }
        assert!(
            assess(&[&n], &[&n], NOW, NOW + 7 * DAY, false)
                .blockers
                .is_empty()
        );
    }

    #[test]
    fn a_node_of_the_domain_offline_stops_and_domains_are_named_as_the_recipes_name_them() {
        let a = expired_node("vc1");
        let mut b = expired_node("vc2");
        b.connected = false;
        let r = assess(&[&a], &[&a, &b], NOW, NOW + 7 * DAY, false);
        assert_eq!(r.blockers.len(), 1, "{r:?}");
        assert!(r.blockers[0].contains("not connected: vc2"), "{r:?}");
        assert_eq!(a.domain().0, "vsphere.local");
        assert_eq!(a.domain().1, b.domain().1);
        let lone = node("esx-only", vec![]);
        assert_eq!(lone.domain(), ("esx-only".into(), "node:esx-only".into()));
        let nodes = vec![a.clone(), b.clone(), lone];
        assert_eq!(
            known_domains(&nodes),
            "esx-only (esx-only); vsphere.local (vc1, vc2)"
        );
        let args = |domain: Option<&str>, agent: Option<&str>| VsphereArgs {
            domain: domain.map(str::to_owned),
            agent: agent.map(str::to_owned),
            within: Duration::from_secs(7 * 86_400),
            allow_several_tenant_credentials: false,
            dry_run: true,
            output: OutputArgs::TABLE,
        };
        let (t, d) = select(&nodes, &args(Some("VSPHERE.local"), None)).unwrap();
        assert_eq!((t.len(), d.len()), (2, 2));
        let (t, d) = select(&nodes, &args(None, Some("vc2"))).unwrap();
        assert_eq!((t.len(), d.len()), (1, 2));
        let e = select(&nodes, &args(Some("corp.local"), None)).unwrap_err();
        assert!(
            matches!(&e, CliError::Usage(m) if m.contains("known domains: esx-only (esx-only); vsphere.local (vc1, vc2)")),
            "{e}"
        );
        assert!(matches!(
            select(&nodes, &args(None, Some("nope"))),
            Err(CliError::Usage(_))
        ));
    }
}

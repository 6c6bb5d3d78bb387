//! Remote commands (`certfleet exec AGENT -- CMD ARGS…`) for what no recipe covers, decided
//! here on the host: the controller only relays.
//!
//! The agent's config lists what may run (`[[exec.allow]]`, nothing by default): a rule names an
//! absolute program, a rule per argument position (an exact string, a glob or a regex) and what
//! may follow (`rest`), an optional user to run as, a timeout, the environment variables the
//! caller may set and a cap on the output. A request is matched against every rule of its
//! program; the first that accepts it runs it, otherwise the answer names the rule that refused
//! it and why (or, when no rule is for that program, lists the rules there are).
//!
//! An allowed command runs without a shell, with argv exactly as matched, stdin closed, a clean
//! environment (`PATH` plus the allowed variables), in a process group of its own. Its output
//! goes back in chunks as it is read; past the cap it is read and dropped (the result says so).
//! At the timeout, or when the operator cancels, the whole group gets SIGTERM and, after a grace
//! period, SIGKILL; whatever the command leaves running in its group after it exits is killed
//! too. A lost link to the controller does not kill a command (it may be halfway through a
//! change); its timeout still bounds it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use certfleet_common::proto as pb;
use serde::Deserialize;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot};

/// Allowed `timeout` of a rule (and of a request).
pub const TIMEOUT_RANGE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(3600));
/// Allowed `max_output` of a rule, in bytes.
pub const MAX_OUTPUT_RANGE: (u64, u64) = (1, 64 << 20);
/// Commands one agent runs at once; more are refused (the host is in trouble already).
pub const MAX_RUNNING: usize = 4;
/// Between SIGTERM and SIGKILL of a command's process group.
const KILL_GRACE: Duration = Duration::from_secs(2);
/// How long the output pipes may stay open after the command exited (a background child
/// holding them) before the group is killed.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(1);
/// `PATH` of every command (the caller cannot change it).
const SAFE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Largest request the agent looks at: argv entries and bytes per entry.
const MAX_ARGS: usize = 256;
const MAX_ARG_BYTES: usize = 4096;

fn default_timeout() -> String {
    "60s".into()
}
fn default_max_output() -> u64 {
    1 << 20
}

/// `[exec]`: remote commands this host allows.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecSection {
    /// The rules; empty (the default) allows nothing.
    #[serde(default)]
    pub allow: Vec<ExecRule>,
}

/// One `[[exec.allow]]` rule, as written in the file (see [`Rule`] for the checked form).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRule {
    /// Name shown when it allows or refuses something.
    pub name: String,
    /// Absolute path of the program (used as given, not under the root prefix). A request names
    /// it by this path or by its file name.
    pub command: String,
    /// One rule per argument position: a string (exact), or a table with one of `exact`,
    /// `glob`, `regex` (whole argument), `any = true`.
    #[serde(default)]
    pub args: Vec<toml::Value>,
    /// Arguments after the positional ones: absent (none allowed), `"any"`, or a table as in
    /// `args` that each of them must match.
    #[serde(default)]
    pub rest: Option<toml::Value>,
    /// User to run as (with that user's primary group only); default the agent's own.
    #[serde(default)]
    pub run_as: Option<String>,
    /// Longest run (humantime); a request may ask for less, never more.
    #[serde(default = "default_timeout")]
    pub timeout: String,
    /// Environment variables a request may set.
    #[serde(default)]
    pub env: Vec<String>,
    /// Bytes of output sent back (both streams together); the rest is dropped.
    #[serde(default = "default_max_output")]
    pub max_output: u64,
}

/// How one argument is checked.
#[derive(Clone, Debug)]
pub enum ArgMatch {
    /// Exactly this string.
    Exact(String),
    /// A shell glob: `*` and `?` never match `/` nor a leading `.` (so `/var/log/*` does not
    /// let `..` through).
    Glob(glob::Pattern),
    /// A regex that must match the whole argument.
    Regex(regex::Regex),
    /// Anything.
    Any,
}

impl ArgMatch {
    fn parse(v: &toml::Value, allow_any_word: bool) -> Result<ArgMatch, String> {
        match v {
            toml::Value::String(s) if allow_any_word && s == "any" => Ok(ArgMatch::Any),
            toml::Value::String(s) => Ok(ArgMatch::Exact(s.clone())),
            toml::Value::Table(t) => {
                if t.len() != 1 {
                    return Err(format!(
                        "a table needs exactly one of exact, glob, regex, any (has {})",
                        t.keys().cloned().collect::<Vec<_>>().join(", ")
                    ));
                }
                let (k, v) = t.iter().next().expect("one entry");
                match (k.as_str(), v) {
                    ("exact", toml::Value::String(s)) => Ok(ArgMatch::Exact(s.clone())),
                    ("glob", toml::Value::String(s)) => glob::Pattern::new(s)
                        .map(ArgMatch::Glob)
                        .map_err(|e| format!("bad glob {s:?}: {e}")),
                    ("regex", toml::Value::String(s)) => regex::Regex::new(&format!("^(?:{s})$"))
                        .map(ArgMatch::Regex)
                        .map_err(|e| {
                            // regex's messages draw the pattern over several lines: keep the gist.
                            let e = e.to_string();
                            let gist = e
                                .lines()
                                .last()
                                .unwrap_or_default()
                                .trim_start_matches("error: ");
                            format!("bad regex {s:?}: {gist}")
                        }),
                    ("any", toml::Value::Boolean(true)) => Ok(ArgMatch::Any),
                    (k, v) => Err(format!(
                        "{k} = {v}: expected exact/glob/regex = \"…\" or any = true"
                    )),
                }
            }
            other => Err(format!(
                "{other}: expected a string or a table (exact, glob, regex, any)"
            )),
        }
    }

    fn matches(&self, arg: &str) -> bool {
        match self {
            ArgMatch::Exact(s) => s == arg,
            ArgMatch::Glob(p) => p.matches_with(
                arg,
                glob::MatchOptions {
                    case_sensitive: true,
                    require_literal_separator: true,
                    require_literal_leading_dot: true,
                },
            ),
            ArgMatch::Regex(r) => r.is_match(arg),
            ArgMatch::Any => true,
        }
    }

    fn describe(&self) -> String {
        match self {
            ArgMatch::Exact(s) => format!("{s:?}"),
            ArgMatch::Glob(p) => format!("glob {:?}", p.as_str()),
            ArgMatch::Regex(r) => {
                let s = r.as_str();
                let inner = s
                    .strip_prefix("^(?:")
                    .and_then(|s| s.strip_suffix(")$"))
                    .unwrap_or(s);
                format!("regex {inner:?}")
            }
            ArgMatch::Any => "anything".into(),
        }
    }
}

/// A checked rule.
#[derive(Clone, Debug)]
pub struct Rule {
    /// Its name.
    pub name: String,
    /// The program.
    pub command: PathBuf,
    /// Positional argument rules.
    pub args: Vec<ArgMatch>,
    /// What further arguments must match (`None`: no further arguments).
    pub rest: Option<ArgMatch>,
    /// User to run as.
    pub run_as: Option<String>,
    /// Longest run.
    pub timeout: Duration,
    /// Variables a request may set.
    pub env: Vec<String>,
    /// Output cap in bytes.
    pub max_output: u64,
}

impl ExecRule {
    /// The checked form, or every problem of this rule (prefixed `exec.allow[i] (name)`).
    pub fn compile(&self, i: usize) -> Result<Rule, Vec<String>> {
        let at = format!("exec.allow[{i}] ({})", self.name);
        let mut problems = Vec::new();
        if self.name.trim().is_empty() {
            problems.push(format!("exec.allow[{i}]: name is empty"));
        }
        let command = PathBuf::from(&self.command);
        if !command.is_absolute() {
            problems.push(format!(
                "{at}: command {:?} must be an absolute path",
                self.command
            ));
        }
        let mut args = Vec::new();
        for (j, a) in self.args.iter().enumerate() {
            match ArgMatch::parse(a, false) {
                Ok(m) => args.push(m),
                Err(e) => problems.push(format!("{at}: args[{j}]: {e}")),
            }
        }
        let rest = match &self.rest {
            None => None,
            Some(v) => match ArgMatch::parse(v, true) {
                Ok(m) => Some(m),
                Err(e) => {
                    problems.push(format!("{at}: rest: {e}"));
                    None
                }
            },
        };
        let timeout = match humantime::parse_duration(&self.timeout) {
            Ok(d) if d >= TIMEOUT_RANGE.0 && d <= TIMEOUT_RANGE.1 => d,
            Ok(_) => {
                problems.push(format!(
                    "{at}: timeout = {:?} is out of range: must be between {} and {}",
                    self.timeout,
                    humantime::format_duration(TIMEOUT_RANGE.0),
                    humantime::format_duration(TIMEOUT_RANGE.1)
                ));
                TIMEOUT_RANGE.0
            }
            Err(e) => {
                problems.push(format!("{at}: timeout = {:?}: {e}", self.timeout));
                TIMEOUT_RANGE.0
            }
        };
        if !(MAX_OUTPUT_RANGE.0..=MAX_OUTPUT_RANGE.1).contains(&self.max_output) {
            problems.push(format!(
                "{at}: max_output = {} is out of range: must be between {} and {} bytes",
                self.max_output, MAX_OUTPUT_RANGE.0, MAX_OUTPUT_RANGE.1
            ));
        }
        for v in &self.env {
            let ok = !v.is_empty()
                && !v.starts_with(|c: char| c.is_ascii_digit())
                && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                problems.push(format!("{at}: env: {v:?} is not a variable name"));
            } else if v == "PATH" || v.starts_with("LD_") {
                problems.push(format!(
                    "{at}: env: {v} may not be set by a caller (it chooses what runs)"
                ));
            }
        }
        if let Some(u) = &self.run_as
            && u.trim().is_empty()
        {
            problems.push(format!("{at}: run_as is empty"));
        }
        if problems.is_empty() {
            Ok(Rule {
                name: self.name.clone(),
                command,
                args,
                rest,
                run_as: self.run_as.clone(),
                timeout,
                env: self.env.clone(),
                max_output: self.max_output,
            })
        } else {
            Err(problems)
        }
    }
}

impl ExecSection {
    /// Everything wrong with the rules as written (no look at the host).
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (i, r) in self.allow.iter().enumerate() {
            if !seen.insert(r.name.as_str()) {
                problems.push(format!(
                    "exec.allow[{i}]: name {:?} is used by an earlier rule",
                    r.name
                ));
            }
            if let Err(p) = r.compile(i) {
                problems.extend(p);
            }
        }
        problems
    }

    /// The checked rules (those that do not compile are left out; `problems` names them).
    pub fn rules(&self) -> Vec<Rule> {
        self.allow
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.compile(i).ok())
            .collect()
    }
}

/// An allowed request, ready to run.
#[derive(Clone, Debug, PartialEq)]
pub struct Allowed {
    /// The rule that allowed it.
    pub rule: String,
    /// The rule's program (never a path from the request).
    pub program: PathBuf,
    /// Arguments after argv[0].
    pub args: Vec<String>,
    /// The effective timeout.
    pub timeout: Duration,
    /// Variables to set.
    pub env: Vec<(String, String)>,
    /// User to run as.
    pub run_as: Option<String>,
    /// Output cap.
    pub max_output: u64,
}

/// Why a request was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    /// The rule that refused it (`None`: no rule is for this program).
    pub rule: Option<String>,
    /// Why, naming the rule(s).
    pub message: String,
}

fn refused(rule: Option<&str>, message: String) -> Refusal {
    Refusal {
        rule: rule.map(str::to_owned),
        message,
    }
}

/// Why `rule` does not accept `args` and `env`, or `None` if it does.
fn rule_refuses(rule: &Rule, args: &[String], env: &[(String, String)]) -> Option<String> {
    for (j, a) in args.iter().enumerate() {
        let m = match rule.args.get(j) {
            Some(m) => m,
            None => match &rule.rest {
                Some(m) => m,
                None => {
                    return Some(format!(
                        "argument {} {a:?}: the rule allows {} argument{}",
                        j + 1,
                        rule.args.len(),
                        if rule.args.len() == 1 { "" } else { "s" }
                    ));
                }
            },
        };
        if !m.matches(a) {
            return Some(format!(
                "argument {} {a:?} does not match {}",
                j + 1,
                m.describe()
            ));
        }
    }
    if args.len() < rule.args.len() {
        return Some(format!(
            "{} argument{} given, the rule needs {} ({} missing)",
            args.len(),
            if args.len() == 1 { "" } else { "s" },
            rule.args.len(),
            rule.args[args.len()].describe()
        ));
    }
    for (k, _) in env {
        if !rule.env.contains(k) {
            return Some(format!(
                "environment variable {k} is not allowed (allowed: {})",
                if rule.env.is_empty() {
                    "none".to_owned()
                } else {
                    rule.env.join(", ")
                }
            ));
        }
    }
    None
}

/// Matches a request against the rules: the first rule for its program that accepts it, or a
/// refusal naming the rule (several: each with its reason) or listing the rules there are.
/// `timeout` 0 means the rule's; more than the rule's is cut to it.
pub fn decide(
    rules: &[Rule],
    argv: &[String],
    env: &[(String, String)],
    timeout: Duration,
) -> Result<Allowed, Refusal> {
    let Some(program) = argv.first() else {
        return Err(refused(None, "empty command".into()));
    };
    if argv.len() > MAX_ARGS || argv.iter().any(|a| a.len() > MAX_ARG_BYTES) {
        return Err(refused(
            None,
            format!("command too long: at most {MAX_ARGS} words of {MAX_ARG_BYTES} bytes"),
        ));
    }
    let for_program: Vec<&Rule> = rules
        .iter()
        .filter(|r| {
            Path::new(program) == r.command
                || (!program.contains('/')
                    && r.command.file_name().is_some_and(|n| n == program.as_str()))
        })
        .collect();
    if for_program.is_empty() {
        let names: Vec<&str> = rules.iter().map(|r| r.name.as_str()).collect();
        return Err(refused(
            None,
            if names.is_empty() {
                format!(
                    "no rule allows {program}: this agent allows no commands (no [[exec.allow]] in its config)"
                )
            } else {
                format!("no rule allows {program} (rules: {})", names.join(", "))
            },
        ));
    }
    let args = &argv[1..];
    let mut reasons = Vec::new();
    for rule in &for_program {
        match rule_refuses(rule, args, env) {
            None => {
                let timeout = if timeout.is_zero() {
                    rule.timeout
                } else {
                    timeout.min(rule.timeout)
                };
                return Ok(Allowed {
                    rule: rule.name.clone(),
                    program: rule.command.clone(),
                    args: args.to_vec(),
                    timeout,
                    env: env.to_vec(),
                    run_as: rule.run_as.clone(),
                    max_output: rule.max_output,
                });
            }
            Some(why) => reasons.push((rule.name.as_str(), why)),
        }
    }
    let message = reasons
        .iter()
        .map(|(n, why)| format!("refused by rule {n:?}: {why}"))
        .collect::<Vec<_>>()
        .join("; ");
    // The first rule for the program is named as the one that refused (each is in the message).
    Err(refused(Some(reasons[0].0), message))
}

/// The commands running on this agent, so that a cancel finds them and a flood is refused.
#[derive(Default)]
pub struct Running {
    cancels: Mutex<HashMap<String, oneshot::Sender<()>>>,
}

impl Running {
    /// Kills the command `exec_id` (if it still runs).
    pub fn cancel(&self, exec_id: &str) {
        if let Some(tx) = self.cancels.lock().unwrap().remove(exec_id) {
            let _ = tx.send(());
        }
    }
}

fn result(exec_id: &str, outcome: pb::exec_result::Outcome) -> pb::ExecResult {
    pb::ExecResult {
        exec_id: exec_id.to_owned(),
        outcome: outcome as i32,
        ..Default::default()
    }
}

async fn send(tx: &mpsc::Sender<pb::AgentMessage>, kind: pb::agent_message::Kind) {
    let _ = tx.send(pb::AgentMessage { kind: Some(kind) }).await;
}

/// Room left in the link's outbound queue for what must never wait (heartbeats and renewal
/// requests are sent without waiting, and a full queue ends the session).
const QUEUE_HEADROOM: usize = 8;

/// Sends a chunk of output once the outbound queue has [`QUEUE_HEADROOM`] free slots: a command
/// that prints fast is slowed down to the link's pace instead of crowding heartbeats out.
async fn send_output(tx: &mpsc::Sender<pb::AgentMessage>, out: pb::ExecOutput) {
    while tx.capacity() < QUEUE_HEADROOM && !tx.is_closed() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    send(tx, pb::agent_message::Kind::ExecOutput(out)).await;
}

/// Handles one request from the controller: decides, runs if allowed, and sends the output and
/// the result on `tx`. Runs in its own task; returns at once.
///
/// Not idempotent and not journaled: a command is run once per request, and a request is never
/// re-sent (the controller does not retry, and a lost link leaves the command to finish or hit
/// its timeout).
pub fn start(
    rules: Arc<Vec<Rule>>,
    running: Arc<Running>,
    cmd: pb::ExecCommand,
    tx: mpsc::Sender<pb::AgentMessage>,
) {
    tokio::spawn(async move {
        let env: Vec<(String, String)> = cmd
            .env
            .iter()
            .map(|l| (l.key.clone(), l.value.clone()))
            .collect();
        let decision = decide(
            &rules,
            &cmd.argv,
            &env,
            Duration::from_secs(u64::from(cmd.timeout_secs)),
        );
        let allowed = match decision {
            Ok(a) => a,
            Err(r) => {
                tracing::warn!(exec = %cmd.exec_id, operator = %cmd.operator, argv = ?cmd.argv, rule = ?r.rule, reason = %r.message, "remote command refused");
                let mut res = result(&cmd.exec_id, pb::exec_result::Outcome::Refused);
                res.rule = r.rule.unwrap_or_default();
                res.message = r.message;
                res.output_sha256 =
                    hex::encode(ring::digest::digest(&ring::digest::SHA256, b"").as_ref());
                send(&tx, pb::agent_message::Kind::ExecResult(res)).await;
                return;
            }
        };
        let (cancel_tx, cancel_rx) = oneshot::channel();
        let busy = {
            let mut cancels = running.cancels.lock().unwrap();
            let busy = cancels.len() >= MAX_RUNNING;
            if !busy {
                cancels.insert(cmd.exec_id.clone(), cancel_tx);
            }
            busy
        };
        if busy {
            let mut res = result(&cmd.exec_id, pb::exec_result::Outcome::Refused);
            res.rule = allowed.rule;
            res.message = format!(
                "{MAX_RUNNING} remote commands are already running on this agent; try again when one ends"
            );
            send(&tx, pb::agent_message::Kind::ExecResult(res)).await;
            return;
        }
        tracing::info!(exec = %cmd.exec_id, operator = %cmd.operator, argv = ?cmd.argv, rule = %allowed.rule, timeout_s = allowed.timeout.as_secs(), "remote command allowed; running");
        let res = run(&cmd.exec_id, &allowed, &tx, cancel_rx).await;
        running.cancels.lock().unwrap().remove(&cmd.exec_id);
        tracing::info!(exec = %cmd.exec_id, rule = %allowed.rule, outcome = res.outcome, exit_code = res.exit_code, signal = res.signal, output_bytes = res.output_bytes, truncated = res.truncated, output_sha256 = %res.output_sha256, duration_ms = res.duration_ms, "remote command ended");
        send(&tx, pb::agent_message::Kind::ExecResult(res)).await;
    });
}

fn signal_group(pgid: u32, sig: nix::sys::signal::Signal) {
    let pgid = nix::unistd::Pid::from_raw(pgid as i32);
    // ESRCH (nothing left in the group) is the normal case at the end.
    let _ = nix::sys::signal::killpg(pgid, sig);
}

/// Runs an allowed command to its end, streaming its output; the result (not yet sent).
async fn run(
    exec_id: &str,
    allowed: &Allowed,
    tx: &mpsc::Sender<pb::AgentMessage>,
    mut cancel: oneshot::Receiver<()>,
) -> pb::ExecResult {
    use pb::exec_result::Outcome;
    let started = Instant::now();
    let mut res = result(exec_id, Outcome::Exited);
    res.rule = allowed.rule.clone();
    res.timeout_secs = allowed.timeout.as_secs() as u32;
    let mut command = tokio::process::Command::new(&allowed.program);
    command
        .args(&allowed.args)
        .env_clear()
        .env("PATH", SAFE_PATH)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some(user) = &allowed.run_as {
        match nix::unistd::User::from_name(user) {
            Ok(Some(u)) => {
                command
                    .uid(u.uid.as_raw())
                    .gid(u.gid.as_raw())
                    .env("HOME", &u.dir)
                    .env("USER", user)
                    .env("LOGNAME", user);
            }
            _ => {
                res.outcome = Outcome::FailedToStart as i32;
                res.message = format!(
                    "rule {:?}: run_as user {user:?} does not exist on this host",
                    allowed.rule
                );
                return res;
            }
        }
    }
    for (k, v) in &allowed.env {
        command.env(k, v);
    }
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            res.outcome = Outcome::FailedToStart as i32;
            res.message = format!("{}: cannot start: {e}", allowed.program.display());
            return res;
        }
    };
    let pgid = child.id().unwrap_or(0);
    let (chunk_tx, mut chunks) = mpsc::channel::<(pb::ExecStream, Vec<u8>)>(8);
    let reader = |pipe: Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>>, stream| {
        let out = chunk_tx.clone();
        tokio::spawn(async move {
            let Some(mut pipe) = pipe else { return };
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match pipe.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if out.send((stream, buf[..n].to_vec())).await.is_err() {
                            return;
                        }
                    }
                }
            }
        })
    };
    let readers = [
        reader(
            child.stdout.take().map(|p| Box::new(p) as _),
            pb::ExecStream::Stdout,
        ),
        reader(
            child.stderr.take().map(|p| Box::new(p) as _),
            pb::ExecStream::Stderr,
        ),
    ];
    drop(chunk_tx);

    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    let mut sent = 0u64;
    let deadline = tokio::time::Instant::now() + allowed.timeout;
    // When the group gets SIGKILL (after SIGTERM at the timeout or a cancel, or once the
    // command exited and its pipes stay open).
    let mut kill_at: Option<tokio::time::Instant> = None;
    let mut ended_by: Option<Outcome> = None;
    let mut status: Option<std::process::ExitStatus> = None;
    let mut pipes_open = true;
    let mut link_alive = true;
    // Give up on the pipes (a child that left the group holds them) this long after the kill.
    let mut abandon_at: Option<tokio::time::Instant> = None;
    let far = tokio::time::Instant::now() + Duration::from_secs(365 * 86_400);
    loop {
        if status.is_some() && !pipes_open {
            break;
        }
        tokio::select! {
            chunk = chunks.recv(), if pipes_open => match chunk {
                Some((stream, data)) => {
                    let room = allowed.max_output.saturating_sub(sent);
                    let take = (data.len() as u64).min(room) as usize;
                    if take < data.len() {
                        res.truncated = true;
                    }
                    if take > 0 {
                        digest.update(&data[..take]);
                        sent += take as u64;
                        send_output(tx, pb::ExecOutput {
                            exec_id: exec_id.to_owned(),
                            stream: stream as i32,
                            data: data[..take].to_vec(),
                        }).await;
                    }
                }
                None => pipes_open = false,
            },
            s = child.wait(), if status.is_none() => {
                status = Some(s.unwrap_or_else(|_| std::os::unix::process::ExitStatusExt::from_raw(0)));
                if pipes_open && kill_at.is_none() {
                    kill_at = Some(tokio::time::Instant::now() + DRAIN_AFTER_EXIT);
                }
            }
            _ = tokio::time::sleep_until(deadline), if ended_by.is_none() && status.is_none() => {
                tracing::warn!(exec = %exec_id, rule = %allowed.rule, timeout_s = allowed.timeout.as_secs(), "remote command ran past its timeout; terminating its process group");
                ended_by = Some(Outcome::TimedOut);
                signal_group(pgid, nix::sys::signal::Signal::SIGTERM);
                kill_at = Some(tokio::time::Instant::now() + KILL_GRACE);
            }
            r = &mut cancel, if link_alive && ended_by.is_none() && status.is_none() => {
                if r.is_ok() {
                    tracing::warn!(exec = %exec_id, rule = %allowed.rule, "remote command cancelled by the operator; terminating its process group");
                    ended_by = Some(Outcome::Cancelled);
                    signal_group(pgid, nix::sys::signal::Signal::SIGTERM);
                    kill_at = Some(tokio::time::Instant::now() + KILL_GRACE);
                } else {
                    // The link is gone: the command runs on to its end or its timeout.
                    link_alive = false;
                }
            }
            _ = tokio::time::sleep_until(kill_at.unwrap_or(far)), if kill_at.is_some() => {
                signal_group(pgid, nix::sys::signal::Signal::SIGKILL);
                kill_at = None;
                abandon_at = Some(tokio::time::Instant::now() + KILL_GRACE);
            }
            _ = tokio::time::sleep_until(abandon_at.unwrap_or(far)), if abandon_at.is_some() => {
                // Something outside the group holds the pipes: stop reading.
                for r in &readers {
                    r.abort();
                }
                pipes_open = false;
                abandon_at = None;
            }
        }
    }
    // Whatever the command left behind in its group goes with it.
    signal_group(pgid, nix::sys::signal::Signal::SIGKILL);
    let digest = digest.finish();
    res.output_sha256 = hex::encode(digest.as_ref());
    res.output_bytes = sent;
    res.duration_ms = started.elapsed().as_millis() as u64;
    let status = status.expect("loop ends once the command exited");
    use std::os::unix::process::ExitStatusExt;
    match ended_by {
        Some(o) => {
            res.outcome = o as i32;
            res.signal = status.signal().unwrap_or(0);
            res.exit_code = status.code().unwrap_or(-1);
            res.message = match o {
                Outcome::TimedOut => format!(
                    "{} ran past its timeout of {}; its process group was killed",
                    allowed.program.display(),
                    humantime::format_duration(allowed.timeout)
                ),
                _ => format!(
                    "{} cancelled by the operator; its process group was killed",
                    allowed.program.display()
                ),
            };
        }
        None => {
            res.exit_code = status.code().unwrap_or(-1);
            res.signal = status.signal().unwrap_or(0);
            if res.signal != 0 {
                res.message = format!(
                    "{} ended by signal {}",
                    allowed.program.display(),
                    res.signal
                );
            }
        }
    }
    if res.truncated {
        let note = format!(
            "output cut at {} bytes (the rule's max_output)",
            allowed.max_output
        );
        res.message = if res.message.is_empty() {
            note
        } else {
            format!("{}; {note}", res.message)
        };
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(toml_text: &str) -> Vec<Rule> {
        let s: ExecSection = toml::from_str(toml_text).unwrap();
        assert!(s.problems().is_empty(), "{:?}", s.problems());
        s.rules()
    }

    fn argv(words: &[&str]) -> Vec<String> {
        words.iter().map(|s| s.to_string()).collect()
    }

    const RULES: &str = r#"
        [[allow]]
        name = "unit-status"
        command = "/usr/bin/systemctl"
        args = ["status", { glob = "vmware-*.service" }]

        [[allow]]
        name = "unit-restart"
        command = "/usr/bin/systemctl"
        args = ["restart", { regex = "vmware-(vpxd|stsd)" }]
        timeout = "5m"

        [[allow]]
        name = "logs"
        command = "/usr/bin/tail"
        args = [{ regex = "-n[0-9]{1,4}" }]
        rest = { glob = "/var/log/vmware/*/*.log" }
        env = ["TZ"]

        [[allow]]
        name = "anything-after"
        command = "/opt/vmware/bin/dir-cli"
        args = ["service", { any = true }]
        rest = "any"
    "#;

    #[test]
    fn allowed_commands_match_by_path_or_file_name() {
        let r = rules(RULES);
        let a = decide(
            &r,
            &argv(&["systemctl", "status", "vmware-vpxd.service"]),
            &[],
            Duration::ZERO,
        )
        .unwrap();
        assert_eq!(a.rule, "unit-status");
        assert_eq!(a.program, PathBuf::from("/usr/bin/systemctl"));
        assert_eq!(a.timeout, Duration::from_secs(60));
        let a = decide(
            &r,
            &argv(&["/usr/bin/systemctl", "restart", "vmware-stsd"]),
            &[],
            Duration::from_secs(9000),
        )
        .unwrap();
        assert_eq!(a.rule, "unit-restart");
        assert_eq!(a.timeout, Duration::from_secs(300), "capped to the rule's");
        let a = decide(
            &r,
            &argv(&[
                "dir-cli",
                "service",
                "list",
                "--login",
                "x",
                "--password",
                "y",
            ]),
            &[],
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(
            (a.rule.as_str(), a.timeout),
            ("anything-after", Duration::from_secs(5))
        );
        let a = decide(
            &r,
            &argv(&[
                "tail",
                "-n50",
                "/var/log/vmware/vpxd/vpxd.log",
                "/var/log/vmware/sso/a.log",
            ]),
            &[("TZ".into(), "UTC".into())],
            Duration::ZERO,
        )
        .unwrap();
        assert_eq!(a.args.len(), 3);
        assert_eq!(a.env, vec![("TZ".to_owned(), "UTC".to_owned())]);
    }

    #[test]
    fn refusals_name_the_rule_and_the_reason() {
        let r = rules(RULES);
        let e = decide(&r, &argv(&["/bin/cat", "/etc/shadow"]), &[], Duration::ZERO).unwrap_err();
        assert_eq!(e.rule, None);
        assert_eq!(
            e.message,
            "no rule allows /bin/cat (rules: unit-status, unit-restart, logs, anything-after)"
        );
        // Same file name, another directory: not the rule's program.
        let e = decide(
            &r,
            &argv(&["/tmp/systemctl", "status", "vmware-vpxd.service"]),
            &[],
            Duration::ZERO,
        )
        .unwrap_err();
        assert!(
            e.message.starts_with("no rule allows /tmp/systemctl"),
            "{e}"
        );
        // Two rules for the program: each says why.
        let e = decide(
            &r,
            &argv(&["systemctl", "stop", "vmware-vpxd"]),
            &[],
            Duration::ZERO,
        )
        .unwrap_err();
        assert!(
            e.message.contains(
                "refused by rule \"unit-status\": argument 1 \"stop\" does not match \"status\""
            ) && e.message.contains(
                "refused by rule \"unit-restart\": argument 1 \"stop\" does not match \"restart\""
            ),
            "{e}"
        );
        let e = decide(
            &r,
            &argv(&["tail", "-n50", "/var/log/vmware/../../../etc/shadow"]),
            &[],
            Duration::ZERO,
        )
        .unwrap_err();
        assert_eq!(e.rule.as_deref(), Some("logs"));
        assert!(
            e.message.contains("argument 2")
                && e.message.contains("glob \"/var/log/vmware/*/*.log\""),
            "{e}"
        );
        let e = decide(&r, &argv(&["tail", "-n50000"]), &[], Duration::ZERO).unwrap_err();
        assert!(e.message.contains("regex \"-n[0-9]{1,4}\""), "{e}");
        let e = decide(
            &r,
            &argv(&["tail", "-n5"]),
            &[("LD_PRELOAD".into(), "/x.so".into())],
            Duration::ZERO,
        )
        .unwrap_err();
        assert!(
            e.message
                .contains("environment variable LD_PRELOAD is not allowed (allowed: TZ)"),
            "{e}"
        );
        // Too few and too many arguments.
        let e = decide(&r, &argv(&["dir-cli"]), &[], Duration::ZERO).unwrap_err();
        assert!(
            e.message.contains("0 arguments given, the rule needs 2"),
            "{e}"
        );
        let e = decide(
            &r,
            &argv(&["/usr/bin/systemctl", "restart", "vmware-vpxd", "--force"]),
            &[],
            Duration::ZERO,
        )
        .unwrap_err();
        assert!(
            e.message
                .contains("argument 3 \"--force\": the rule allows 2 arguments"),
            "{e}"
        );
        // A regex matches the whole argument, not a part.
        let e = decide(
            &r,
            &argv(&["systemctl", "restart", "vmware-vpxd; reboot"]),
            &[],
            Duration::ZERO,
        )
        .unwrap_err();
        assert!(
            e.message
                .contains("\"vmware-vpxd; reboot\" does not match regex"),
            "{e}"
        );
        // Nothing configured: nothing allowed.
        let e = decide(&[], &argv(&["/bin/true"]), &[], Duration::ZERO).unwrap_err();
        assert!(e.message.contains("allows no commands"), "{e}");
        let e = decide(&r, &[], &[], Duration::ZERO).unwrap_err();
        assert_eq!(e.message, "empty command");
    }

    #[test]
    fn bad_rules_are_all_reported() {
        let s: ExecSection = toml::from_str(
            r#"
            [[allow]]
            name = "a"
            command = "bin/relative"
            args = [{ regex = "(" }, { glob = "[x" }, { exact = "x", glob = "y" }, 3]
            rest = { any = false }
            timeout = "3h"
            env = ["PATH", "1X", "OK_1"]
            max_output = 0
            [[allow]]
            name = "a"
            command = "/bin/true"
            timeout = "soon"
            "#,
        )
        .unwrap();
        let p = s.problems();
        let all = p.join("\n");
        for want in [
            "exec.allow[0] (a): command \"bin/relative\" must be an absolute path",
            "args[0]: bad regex",
            "args[1]: bad glob",
            "args[2]: a table needs exactly one of",
            "args[3]: 3: expected a string or a table",
            "rest: any = false",
            "timeout = \"3h\" is out of range",
            "env: PATH may not be set",
            "env: \"1X\" is not a variable name",
            "max_output = 0 is out of range",
            "exec.allow[1]: name \"a\" is used by an earlier rule",
            "exec.allow[1] (a): timeout = \"soon\"",
        ] {
            assert!(all.contains(want), "missing {want:?} in\n{all}");
        }
        assert_eq!(p.len(), 12, "{all}");
        assert_eq!(s.rules().len(), 0);
    }

    fn allowed(program: &str, args: &[&str], timeout: Duration, max_output: u64) -> Allowed {
        Allowed {
            rule: "t".into(),
            program: program.into(),
            args: argv(args),
            timeout,
            env: vec![("GREETING".into(), "hi".into())],
            run_as: None,
            max_output,
        }
    }

    async fn run_collect(a: &Allowed) -> (pb::ExecResult, Vec<u8>) {
        let (tx, mut rx) = mpsc::channel(1024);
        let (_keep, cancel) = oneshot::channel();
        let res = run("x", a, &tx, cancel).await;
        drop(tx);
        let mut out = Vec::new();
        while let Some(m) = rx.recv().await {
            if let Some(pb::agent_message::Kind::ExecOutput(o)) = m.kind {
                out.extend(o.data);
            }
        }
        (res, out)
    }

    #[tokio::test]
    async fn runs_without_a_shell_with_a_clean_environment_and_caps_output() {
        let a = allowed(
            "/bin/sh",
            &[
                "-c",
                "echo \"$GREETING $HOME $0\"; echo err >&2; exit 3",
                "a b;c",
            ],
            Duration::from_secs(10),
            1000,
        );
        let (res, out) = run_collect(&a).await;
        assert_eq!(res.exit_code, 3, "{res:?}");
        assert_eq!(res.outcome, pb::exec_result::Outcome::Exited as i32);
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(
            text.contains("hi  a b;c\n") && text.contains("err\n"),
            "{text:?}"
        );
        assert_eq!(
            res.output_sha256,
            hex::encode(ring::digest::digest(&ring::digest::SHA256, &out).as_ref())
        );
        assert!(!res.truncated);

        let a = allowed(
            "/bin/sh",
            &["-c", "yes | head -c 100000"],
            Duration::from_secs(10),
            1000,
        );
        let (res, out) = run_collect(&a).await;
        assert_eq!(
            (res.exit_code, res.truncated, out.len(), res.output_bytes),
            (0, true, 1000, 1000)
        );
        assert!(res.message.contains("output cut at 1000 bytes"), "{res:?}");
    }

    #[tokio::test]
    async fn a_command_past_its_timeout_is_killed_with_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        let script = format!(
            "trap '' TERM; sleep 60 & echo $! > {p}; echo $$ >> {p}; echo started; wait",
            p = pids.display()
        );
        let a = allowed("/bin/sh", &["-c", &script], Duration::from_secs(1), 1000);
        let (res, out) = run_collect(&a).await;
        assert_eq!(
            res.outcome,
            pb::exec_result::Outcome::TimedOut as i32,
            "{res:?}"
        );
        assert_eq!(
            res.signal, 9,
            "the shell ignores TERM: KILL after the grace: {res:?}"
        );
        assert_eq!(out, b"started\n");
        for pid in std::fs::read_to_string(&pids).unwrap().split_whitespace() {
            // Gone, or a zombie not yet reaped by its (killed) parent's reaper. SIGKILL is
            // delivered asynchronously: on a busy machine the process may still be exiting.
            let stat = || std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let dead = |s: &str| s.is_empty() || s.contains(") Z ");
            for _ in 0..100 {
                if dead(&stat()) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let stat = stat();
            assert!(
                stat.is_empty() || stat.contains(") Z "),
                "process {pid} survives: {stat}"
            );
        }
    }

    #[tokio::test]
    async fn a_program_that_cannot_start_is_named() {
        let a = allowed("/nonexistent/tool", &[], Duration::from_secs(1), 10);
        let (res, _) = run_collect(&a).await;
        assert_eq!(res.outcome, pb::exec_result::Outcome::FailedToStart as i32);
        assert!(
            res.message.contains("/nonexistent/tool: cannot start"),
            "{res:?}"
        );
    }
}

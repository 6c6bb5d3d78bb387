//! Client contexts, kubectl style: which controller the operator commands talk to and with
//! which identity, for several fleets from one machine.
//!
//! A small TOML file (`$XDG_CONFIG_HOME/certfleet/config.toml`, by default
//! `~/.config/certfleet/config.toml`; `--config` / `CERTFLEET_CONFIG` point elsewhere) names
//! contexts and which one is current:
//!
//! ```toml
//! current-context = "prod"
//!
//! [contexts.prod]
//! controller = "ctl.example.org:7443"
//! identity = "/home/op/.certfleet/prod-admin"   # ca.pem, cert.pem, key.pem
//! # ca, cert, key: single files that replace the identity directory's
//! output = "wide"                               # default -o of listing commands
//! ```
//!
//! This module is the one place where the controller address and the identity are resolved:
//! a flag wins over its environment variable (`CERTFLEET_CONTROLLER`, `CERTFLEET_IDENTITY`),
//! which wins over the context (`--context` / `CERTFLEET_CONTEXT`, else `current-context`),
//! which wins over the built-in default (`127.0.0.1:7443`, no identity). A missing file is an
//! empty configuration, not an error; a key the file does not know is refused with its
//! file:line (a typo must not silently send commands to the wrong fleet); a context that does
//! not exist is a usage error listing the known ones. The file is rewritten atomically, 0600.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Subcommand;
use serde::{Deserialize, Serialize};

use super::CliError;
use super::output::{Cell, Column, Format, OutputArgs, print_list};

/// Controller address when nothing else says one.
pub const DEFAULT_CONTROLLER: &str = "127.0.0.1:7443";

/// Formats a context may make the default: those every command that prints can produce
/// (csv is refused by single-document commands).
const DEFAULT_OUTPUTS: &[Format] = &[Format::Table, Format::Wide, Format::Json, Format::Yaml];

/// Problems with the client configuration, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// The file exists but cannot be read.
    #[error("cannot read client config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not valid TOML, or a key or value the file may not hold.
    #[error("{path}:{line}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line of the problem.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A value that parses but makes no sense (an unknown output format …).
    #[error("{path}: context {context:?}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The context.
        context: String,
        /// What is wrong.
        message: String,
    },
    /// The file could not be written.
    #[error(transparent)]
    Write(#[from] certfleet_common::atomic::WriteError),
    /// Serializing the configuration failed (a bug: it is plain data).
    #[error("serializing client config {path}: {message}")]
    Serialize {
        /// The file.
        path: PathBuf,
        /// The serializer's message.
        message: String,
    },
}

/// One named context.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    /// Controller address (host:port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<String>,
    /// Operator identity directory (ca.pem, cert.pem, key.pem).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<PathBuf>,
    /// Fleet CA file, instead of the identity directory's ca.pem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// Operator certificate, instead of the identity directory's cert.pem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// Operator key, instead of the identity directory's key.pem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// Default `-o` of the commands that print (table, wide, json or yaml).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

/// The whole file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ClientConfig {
    /// The context used when `--context` is not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    /// Contexts by name.
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

/// The environment the resolution reads (injected so that tests do not touch the process's).
pub trait Env {
    /// The variable's value, if set and not empty.
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

/// Where the client configuration lives: `--config`, `CERTFLEET_CONFIG`,
/// `$XDG_CONFIG_HOME/certfleet/config.toml`, `$HOME/.config/certfleet/config.toml`.
pub fn config_path(flag: Option<&Path>, env: &dyn Env) -> Option<PathBuf> {
    if let Some(p) = flag {
        return Some(p.to_path_buf());
    }
    if let Some(p) = env.var("CERTFLEET_CONFIG") {
        return Some(PathBuf::from(p));
    }
    // The XDG base directory spec: a relative XDG_CONFIG_HOME is invalid and ignored.
    if let Some(x) = env.var("XDG_CONFIG_HOME").filter(|x| x.starts_with('/')) {
        return Some(Path::new(&x).join("certfleet/config.toml"));
    }
    env.var("HOME")
        .map(|h| Path::new(&h).join(".config/certfleet/config.toml"))
}

/// 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

impl ClientConfig {
    /// Parses the text of `path` (named in errors) and checks every context's values.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ContextError> {
        let cfg: ClientConfig = toml::from_str(text).map_err(|e| ContextError::Parse {
            path: path.to_path_buf(),
            line: e.span().map_or(1, |s| line_of(text, s.start)),
            message: e.message().trim().to_owned(),
        })?;
        for (name, c) in &cfg.contexts {
            if let Some(o) = &c.output
                && !DEFAULT_OUTPUTS.iter().any(|f| f.to_string() == *o)
            {
                return Err(ContextError::Invalid {
                    path: path.to_path_buf(),
                    context: name.clone(),
                    message: format!("output = {o:?} is not one of {}", names(DEFAULT_OUTPUTS)),
                });
            }
        }
        Ok(cfg)
    }

    /// Loads `path`; a file that does not exist is an empty configuration.
    pub fn load(path: &Path) -> Result<Self, ContextError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(ContextError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Writes the file at `path` (its directory made 0700 if new, the file 0600, atomically:
    /// a reader sees the old file or the new one). Idempotent: the same configuration written
    /// twice gives the same bytes.
    pub fn save(&self, path: &Path) -> Result<(), ContextError> {
        let text = toml::to_string(self).map_err(|e| ContextError::Serialize {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            certfleet_common::atomic::create_private_dir(dir)?;
        }
        certfleet_common::atomic::write_private(path, text.as_bytes())?;
        Ok(())
    }

    /// The context called `name`, or a usage error (exit 2) listing the known ones.
    pub fn get(&self, name: &str, path: &Path) -> Result<&Context, CliError> {
        self.contexts
            .get(name)
            .ok_or_else(|| CliError::Usage(self.unknown(name, path)))
    }

    fn unknown(&self, name: &str, path: &Path) -> String {
        let known = if self.contexts.is_empty() {
            "none: create one with `certfleet context set NAME --controller HOST:PORT --identity DIR`"
                .to_owned()
        } else {
            self.contexts.keys().cloned().collect::<Vec<_>>().join(", ")
        };
        format!("no context {name:?} in {} (known: {known})", path.display())
    }
}

fn names(formats: &[Format]) -> String {
    formats
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// [`ClientConfig::load`] for a command: a file that says something wrong is the caller's to
/// fix (exit 2), a file that cannot be read a runtime error (exit 1).
fn load(path: &Path) -> anyhow::Result<ClientConfig> {
    ClientConfig::load(path).map_err(|e| match e {
        ContextError::Parse { .. } | ContextError::Invalid { .. } => {
            CliError::Usage(e.to_string()).into()
        }
        e => e.into(),
    })
}

/// Where a resolved value came from (shown by `context show`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A command-line flag.
    Flag,
    /// An environment variable.
    Env,
    /// The context.
    Context,
    /// The built-in default.
    Default,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Source::Flag => "flag",
            Source::Env => "environment",
            Source::Context => "context",
            Source::Default => "default",
        })
    }
}

/// The files an operator connects with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IdentityFiles {
    /// Fleet CA the controller's certificate must chain to.
    pub ca: PathBuf,
    /// Operator certificate.
    pub cert: PathBuf,
    /// Operator key.
    pub key: PathBuf,
    /// The identity directory, when the files come from one (named in errors).
    pub dir: Option<PathBuf>,
}

impl IdentityFiles {
    /// `ca.pem`, `cert.pem` and `key.pem` in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        IdentityFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            dir: Some(dir.to_path_buf()),
        }
    }

    /// How the identity is named in errors: its directory, else its certificate.
    pub fn shown(&self) -> String {
        self.dir
            .as_deref()
            .unwrap_or(&self.cert)
            .display()
            .to_string()
    }
}

/// What the global options, the environment and the client config resolve to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Resolved {
    /// The context used, if any.
    pub context: Option<String>,
    /// The client config file consulted, if any.
    pub config: Option<PathBuf>,
    /// Controller address.
    pub controller: String,
    /// Where it came from.
    pub controller_from: Source,
    /// Identity files, if any source names them.
    pub identity: Option<IdentityFiles>,
    /// Where they came from (meaningless when `identity` is none).
    pub identity_from: Source,
    /// Default output format from the context.
    #[serde(serialize_with = "format_name")]
    pub output: Option<Format>,
}

fn format_name<S: serde::Serializer>(f: &Option<Format>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&f.map(|f| f.to_string()).unwrap_or_default())
}

/// The global options that take part in the resolution, as given on the command line only
/// (their environment variables are read here, so that the precedence lives in one place).
#[derive(Clone, Debug, Default)]
pub struct Globals {
    /// `--controller`.
    pub controller: Option<String>,
    /// `--identity`.
    pub identity: Option<PathBuf>,
    /// `--context`.
    pub context: Option<String>,
    /// `--config`.
    pub config: Option<PathBuf>,
}

/// A context path as written: `~/` is the home directory; relative paths are relative to the
/// config file's directory (`context set` writes absolute ones).
fn context_path(p: &Path, config: &Path, env: &dyn Env) -> PathBuf {
    if let (Ok(rest), Some(home)) = (p.strip_prefix("~"), env.var("HOME")) {
        return Path::new(&home).join(rest);
    }
    if p.is_relative()
        && let Some(dir) = config.parent()
    {
        return dir.join(p);
    }
    p.to_path_buf()
}

/// Resolves the controller address and identity: flag > environment > context > default.
pub fn resolve(g: &Globals, env: &dyn Env) -> anyhow::Result<Resolved> {
    let path = config_path(g.config.as_deref(), env);
    let wanted = g.context.clone().or_else(|| env.var("CERTFLEET_CONTEXT"));
    let (cfg, path) = match path {
        Some(p) => (load(&p)?, Some(p)),
        None if wanted.is_some() => {
            return Err(CliError::Usage(
                "--context needs a client config, but neither --config, CERTFLEET_CONFIG, XDG_CONFIG_HOME nor HOME says where it is".into(),
            )
            .into());
        }
        None => (ClientConfig::default(), None),
    };
    let name = wanted.or_else(|| cfg.current_context.clone());
    let ctx = match (&name, &path) {
        (Some(n), Some(p)) => Some(cfg.get(n, p)?.clone()),
        _ => None,
    };
    let ctx_path = |v: &Option<PathBuf>| {
        v.as_ref()
            .map(|v| context_path(v, path.as_deref().unwrap_or(Path::new("")), env))
    };
    let (controller, controller_from) = if let Some(c) = &g.controller {
        (c.clone(), Source::Flag)
    } else if let Some(c) = env.var("CERTFLEET_CONTROLLER") {
        (c, Source::Env)
    } else if let Some(c) = ctx.as_ref().and_then(|c| c.controller.clone()) {
        (c, Source::Context)
    } else {
        (DEFAULT_CONTROLLER.to_owned(), Source::Default)
    };
    let (identity, identity_from) = if let Some(d) = &g.identity {
        (Some(IdentityFiles::in_dir(d)), Source::Flag)
    } else if let Some(d) = env.var("CERTFLEET_IDENTITY") {
        (Some(IdentityFiles::in_dir(Path::new(&d))), Source::Env)
    } else if let Some(c) = &ctx {
        let dir = ctx_path(&c.identity);
        let pick = |file: &Option<PathBuf>, default: &str| {
            ctx_path(file).or_else(|| dir.as_ref().map(|d| d.join(default)))
        };
        match (
            pick(&c.ca, "ca.pem"),
            pick(&c.cert, "cert.pem"),
            pick(&c.key, "key.pem"),
        ) {
            (Some(ca), Some(cert), Some(key)) => (
                Some(IdentityFiles {
                    ca,
                    cert,
                    key,
                    dir: dir.clone(),
                }),
                Source::Context,
            ),
            (None, None, None) => (None, Source::Default),
            _ => {
                return Err(CliError::Usage(format!(
                    "context {:?} in {} names only some of ca, cert and key and no identity directory for the rest: set `identity = DIR` or all three",
                    name.as_deref().unwrap_or_default(),
                    path.as_deref().unwrap_or(Path::new("")).display()
                ))
                .into());
            }
        }
    } else {
        (None, Source::Default)
    };
    let output = ctx
        .as_ref()
        .and_then(|c| c.output.as_deref())
        .and_then(|o| DEFAULT_OUTPUTS.iter().copied().find(|f| f.to_string() == o));
    Ok(Resolved {
        context: name,
        config: path,
        controller,
        controller_from,
        identity,
        identity_from,
        output,
    })
}

/// `certfleet context …`.
#[derive(Subcommand)]
pub enum ContextCmd {
    /// List the contexts of the client config (the current one marked with *).
    #[command(after_help = "Example:\n  certfleet context list")]
    List {
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Show what a context (default: the one in use) resolves to, and where each value comes
    /// from (flag, environment, context, default).
    #[command(
        after_help = "Example:\n  certfleet context show\n  certfleet --context prod context show -o json"
    )]
    Show {
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Make NAME the current context.
    #[command(after_help = "Example:\n  certfleet context use prod")]
    Use {
        /// The context.
        name: String,
    },
    /// Create or update context NAME: the global --controller and --identity given with this
    /// command are written into it, with --ca, --cert, --key and --default-output.
    #[command(
        after_help = "Example:\n  certfleet --controller ctl.example.org:7443 --identity ~/prod-admin context set prod --use"
    )]
    Set {
        /// The context.
        name: String,
        /// Fleet CA file (instead of the identity directory's ca.pem).
        #[arg(long)]
        ca: Option<PathBuf>,
        /// Operator certificate (instead of the identity directory's cert.pem).
        #[arg(long)]
        cert: Option<PathBuf>,
        /// Operator key (instead of the identity directory's key.pem).
        #[arg(long)]
        key: Option<PathBuf>,
        /// Default -o of the commands that print: table, wide, json or yaml.
        #[arg(long, value_enum)]
        default_output: Option<Format>,
        /// Also make it the current context.
        #[arg(long = "use")]
        make_current: bool,
    },
    /// Delete context NAME (and unset it as the current context).
    #[command(after_help = "Example:\n  certfleet context delete old-lab")]
    Delete {
        /// The context.
        name: String,
    },
}

/// A path made absolute against the working directory (context files outlive the shell they
/// were written from).
fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(p).map_err(|e| anyhow::anyhow!("making {} absolute: {e}", p.display()))
}

/// Where the context commands read and write, or a usage error.
fn file_for(g: &Globals) -> anyhow::Result<PathBuf> {
    config_path(g.config.as_deref(), &ProcessEnv).ok_or_else(|| {
        CliError::Usage(
            "no client config location: pass --config FILE or set CERTFLEET_CONFIG (HOME is not set)"
                .into(),
        )
        .into()
    })
}

/// One row of `context list`.
#[derive(Serialize)]
struct Row {
    name: String,
    current: bool,
    controller: String,
    identity: String,
    output: String,
}

const COLUMNS: &[Column<Row>] = &[
    Column::new("CURRENT", "current", |r| {
        Cell::plain(if r.current { "*" } else { "" })
    }),
    Column::new("NAME", "name", |r| Cell::plain(r.name.clone())),
    Column::new("CONTROLLER", "controller", |r| {
        Cell::plain(r.controller.clone())
    }),
    Column::new("IDENTITY", "identity", |r| Cell::plain(r.identity.clone())),
    Column::new("OUTPUT", "output", |r: &Row| Cell::plain(r.output.clone()))
        .only(super::output::Show::Wide),
];

/// Runs a `context` command. `set` is idempotent: the same command gives the same file.
pub fn run(g: &Globals, cmd: &ContextCmd) -> anyhow::Result<()> {
    let path = file_for(g)?;
    let mut cfg = load(&path)?;
    match cmd {
        ContextCmd::List { out } => {
            let wanted = g
                .context
                .clone()
                .or_else(|| ProcessEnv.var("CERTFLEET_CONTEXT"))
                .or_else(|| cfg.current_context.clone());
            let rows: Vec<Row> = cfg
                .contexts
                .iter()
                .map(|(name, c)| Row {
                    name: name.clone(),
                    current: wanted.as_deref() == Some(name),
                    controller: c.controller.clone().unwrap_or_default(),
                    identity: c
                        .identity
                        .as_ref()
                        .or(c.cert.as_ref())
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                    output: c.output.clone().unwrap_or_default(),
                })
                .collect();
            if rows.is_empty() && out.output.is_table() {
                eprintln!(
                    "no contexts in {}: create one with `certfleet context set NAME`",
                    path.display()
                );
                return Ok(());
            }
            print_list(out, "context list", &rows, &rows, COLUMNS)?;
        }
        ContextCmd::Show { out } => {
            let r = resolve(g, &ProcessEnv)?;
            super::output::print_document(out, "context show", &r, |_| {
                let mut s = String::new();
                let line = |s: &mut String, k: &str, v: String| {
                    s.push_str(&format!("{k:<11} {v}\n"));
                };
                line(
                    &mut s,
                    "context:",
                    r.context.clone().unwrap_or_else(|| "(none)".into()),
                );
                line(
                    &mut s,
                    "config:",
                    r.config
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| "(none)".into()),
                );
                line(
                    &mut s,
                    "controller:",
                    format!("{}  ({})", r.controller, r.controller_from),
                );
                match &r.identity {
                    Some(i) => {
                        line(
                            &mut s,
                            "ca:",
                            format!("{}  ({})", i.ca.display(), r.identity_from),
                        );
                        line(&mut s, "cert:", i.cert.display().to_string());
                        line(&mut s, "key:", i.key.display().to_string());
                    }
                    None => line(&mut s, "identity:", "(none)".into()),
                }
                if let Some(o) = r.output {
                    line(&mut s, "output:", o.to_string());
                }
                s
            })?;
        }
        ContextCmd::Use { name } => {
            cfg.get(name, &path)?;
            cfg.current_context = Some(name.clone());
            cfg.save(&path)?;
            println!("current context is now {name} ({})", path.display());
        }
        ContextCmd::Set {
            name,
            ca,
            cert,
            key,
            default_output,
            make_current,
        } => {
            let c = cfg.contexts.entry(name.clone()).or_default();
            if let Some(v) = &g.controller {
                c.controller = Some(v.clone());
            }
            if let Some(v) = &g.identity {
                c.identity = Some(absolute(v)?);
            }
            for (field, v) in [(&mut c.ca, ca), (&mut c.cert, cert), (&mut c.key, key)] {
                if let Some(v) = v {
                    *field = Some(absolute(v)?);
                }
            }
            if let Some(o) = default_output {
                if !DEFAULT_OUTPUTS.contains(o) {
                    return Err(CliError::Usage(format!(
                        "--default-output {o} cannot be a default (not every command prints it); use one of {}",
                        names(DEFAULT_OUTPUTS)
                    ))
                    .into());
                }
                c.output = Some(o.to_string());
            }
            if c.controller.is_none() {
                return Err(CliError::Usage(format!(
                    "context {name:?} has no controller: pass the global --controller HOST:PORT"
                ))
                .into());
            }
            if *make_current || cfg.current_context.is_none() {
                cfg.current_context = Some(name.clone());
            }
            cfg.save(&path)?;
            println!("context {name} saved in {}", path.display());
        }
        ContextCmd::Delete { name } => {
            cfg.get(name, &path)?;
            cfg.contexts.remove(name);
            if cfg.current_context.as_deref() == Some(name) {
                cfg.current_context = None;
            }
            cfg.save(&path)?;
            println!("context {name} deleted from {}", path.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct FakeEnv(Vec<(&'static str, String)>);

    impl Env for FakeEnv {
        fn var(&self, name: &str) -> Option<String> {
            self.0
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.clone())
        }
    }

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("config.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    const TWO: &str = r#"
current-context = "lab"

[contexts.lab]
controller = "lab.example:7443"
identity = "/ids/lab"

[contexts.prod]
controller = "prod.example:7443"
identity = "ids/prod"
cert = "/pki/op.crt"
output = "wide"
"#;

    #[test]
    fn flag_beats_env_beats_context_beats_default() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = write(tmp.path(), TWO);
        let env = |vars: Vec<(&'static str, String)>| {
            let mut v = vars;
            v.push(("CERTFLEET_CONFIG", cfg.display().to_string()));
            FakeEnv(v)
        };
        // The current context.
        let r = resolve(&Globals::default(), &env(vec![])).unwrap();
        assert_eq!(r.context.as_deref(), Some("lab"));
        assert_eq!(
            (r.controller.as_str(), r.controller_from),
            ("lab.example:7443", Source::Context)
        );
        let id = r.identity.unwrap();
        assert_eq!(id.ca, Path::new("/ids/lab/ca.pem"));
        assert_eq!(r.identity_from, Source::Context);
        // The environment over the context, the flag over the environment.
        let e = env(vec![
            ("CERTFLEET_CONTROLLER", "env.example:1".into()),
            ("CERTFLEET_IDENTITY", "/ids/env".into()),
        ]);
        let r = resolve(&Globals::default(), &e).unwrap();
        assert_eq!(
            (r.controller.as_str(), r.controller_from),
            ("env.example:1", Source::Env)
        );
        assert_eq!(r.identity.unwrap().cert, Path::new("/ids/env/cert.pem"));
        let g = Globals {
            controller: Some("flag.example:2".into()),
            identity: Some("/ids/flag".into()),
            ..Default::default()
        };
        let r = resolve(&g, &e).unwrap();
        assert_eq!(
            (r.controller.as_str(), r.controller_from),
            ("flag.example:2", Source::Flag)
        );
        assert_eq!(r.identity.unwrap().key, Path::new("/ids/flag/key.pem"));
        // --context over CERTFLEET_CONTEXT over current-context; per-file overrides, relative
        // paths from the config's directory, the context's default output.
        let e = env(vec![("CERTFLEET_CONTEXT", "prod".into())]);
        let r = resolve(&Globals::default(), &e).unwrap();
        assert_eq!(r.controller, "prod.example:7443");
        let id = r.identity.unwrap();
        assert_eq!(id.cert, Path::new("/pki/op.crt"));
        assert_eq!(id.key, tmp.path().join("ids/prod/key.pem"));
        assert_eq!(r.output, Some(Format::Wide));
        let g = Globals {
            context: Some("lab".into()),
            ..Default::default()
        };
        assert_eq!(resolve(&g, &e).unwrap().controller, "lab.example:7443");
        // Nothing anywhere: the defaults.
        let none = FakeEnv(vec![(
            "CERTFLEET_CONFIG",
            tmp.path().join("missing.toml").display().to_string(),
        )]);
        let r = resolve(&Globals::default(), &none).unwrap();
        assert_eq!(
            (r.controller.as_str(), r.controller_from, r.identity),
            (DEFAULT_CONTROLLER, Source::Default, None)
        );
    }

    #[test]
    fn an_unknown_context_is_a_usage_error_listing_the_known_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = write(tmp.path(), TWO);
        let g = Globals {
            context: Some("staging".into()),
            config: Some(cfg.clone()),
            ..Default::default()
        };
        let e = resolve(&g, &FakeEnv(vec![])).unwrap_err();
        assert_eq!(super::super::exit_code(&e), super::super::exit::USAGE);
        let text = e.to_string();
        assert!(
            text.contains("\"staging\"")
                && text.contains("lab, prod")
                && text.contains("config.toml"),
            "{text}"
        );
        // Also when the file does not exist at all.
        let g = Globals {
            context: Some("prod".into()),
            config: Some(tmp.path().join("none.toml")),
            ..Default::default()
        };
        let text = resolve(&g, &FakeEnv(vec![])).unwrap_err().to_string();
        assert!(text.contains("known: none"), "{text}");
        // A file with a typo stops every command (exit 2, file:line) rather than being
        // half-used.
        let typo = write(tmp.path(), "[contexts.lab]\nidentty = \"/ids\"\n");
        let g = Globals {
            config: Some(typo),
            ..Default::default()
        };
        let e = resolve(&g, &FakeEnv(vec![])).unwrap_err();
        assert_eq!(super::super::exit_code(&e), super::super::exit::USAGE);
        assert!(e.to_string().contains("config.toml:2: "), "{e}");
    }

    #[test]
    fn parser_errors_name_file_and_line() {
        let p = Path::new("/home/op/.config/certfleet/config.toml");
        let typo = "current-context = \"lab\"\n\n[contexts.lab]\ncontroler = \"x:1\"\n";
        let e = ClientConfig::parse(typo, p).unwrap_err().to_string();
        assert!(
            e.starts_with("/home/op/.config/certfleet/config.toml:4: ") && e.contains("controler"),
            "{e}"
        );
        let top = "current_context = \"lab\"\n";
        let e = ClientConfig::parse(top, p).unwrap_err().to_string();
        assert!(e.contains(":1: ") && e.contains("current_context"), "{e}");
        let bad = "[contexts.lab]\ncontroller = [1]\n";
        let e = ClientConfig::parse(bad, p).unwrap_err().to_string();
        assert!(e.contains(":2: "), "{e}");
        let broken = "[contexts.lab\n";
        let e = ClientConfig::parse(broken, p).unwrap_err().to_string();
        assert!(e.contains(":1: "), "{e}");
        let output = "[contexts.lab]\noutput = \"csv\"\n";
        let e = ClientConfig::parse(output, p).unwrap_err().to_string();
        assert!(
            e.contains("\"lab\"") && e.contains("table, wide, json, yaml"),
            "{e}"
        );
    }

    #[test]
    fn saved_atomically_private_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("new/dir/config.toml");
        let mut cfg = ClientConfig::parse(TWO, &p).unwrap();
        cfg.current_context = Some("prod".into());
        cfg.save(&p).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(p.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
        assert_eq!(ClientConfig::load(&p).unwrap(), cfg);
    }

    #[test]
    fn the_config_file_location() {
        let e = FakeEnv(vec![
            ("XDG_CONFIG_HOME", "/xdg".into()),
            ("HOME", "/home/op".into()),
        ]);
        assert_eq!(
            config_path(None, &e),
            Some(PathBuf::from("/xdg/certfleet/config.toml"))
        );
        let e = FakeEnv(vec![
            ("XDG_CONFIG_HOME", "relative".into()),
            ("HOME", "/home/op".into()),
        ]);
        assert_eq!(
            config_path(None, &e),
            Some(PathBuf::from("/home/op/.config/certfleet/config.toml"))
        );
        let e = FakeEnv(vec![("CERTFLEET_CONFIG", "/etc/cf.toml".into())]);
        assert_eq!(config_path(None, &e), Some(PathBuf::from("/etc/cf.toml")));
        assert_eq!(
            config_path(Some(Path::new("/a.toml")), &e),
            Some(PathBuf::from("/a.toml"))
        );
        assert_eq!(config_path(None, &FakeEnv(vec![])), None);
    }
}

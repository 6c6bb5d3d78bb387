//! What both daemons do the same way at the edges of the process: logging to stderr with
//! `RUST_LOG` (default `info`) as text or JSON lines, and the shutdown signal (SIGINT, or
//! SIGTERM as systemd sends).

use std::io::IsTerminal;

/// How log lines are written (`--log-format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines; colour only on a terminal (never for journald or a file).
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `fields`), for log shippers.
    Json,
}

/// Whether text logs may use ANSI colour: stderr is a terminal and `NO_COLOR` is unset or
/// empty (<https://no-color.org>). journald and files get plain text.
fn stderr_colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Sets up tracing to stderr in `format`; `RUST_LOG` overrides the `info` default.
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(stderr_colour()).init(),
        // Escapes inside a JSON string would be data, not colour: never any.
        LogFormat::Json => builder
            .with_ansi(false)
            .json()
            .flatten_event(false)
            .with_current_span(false)
            .init(),
    }
}

/// Resolves on SIGINT or SIGTERM. `tokio::signal::ctrl_c` alone would ignore systemd's SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}

//! What both daemons do the same way at the edges of the process: logging to stderr with
//! `RUST_LOG` (default `info`), and the shutdown signal (SIGINT, or SIGTERM as systemd sends).

/// Sets up tracing to stderr; `RUST_LOG` overrides the `info` default.
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
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

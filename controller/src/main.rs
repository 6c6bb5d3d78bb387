//! `certfleet`: the controller daemon (`serve`), its set-up (`init`), and the operator CLI.
//! The commands live in `certfleet_controller::cli`; this only parses, sets up logging and the
//! crypto provider, and turns the outcome into an exit code.

use std::process::ExitCode;

use certfleet_controller::cli;

fn main() -> ExitCode {
    // Before any thread starts (see the function's note).
    certfleet_common::heap::arena_per_core();
    let cli = cli::parse();
    certfleet_common::process::init_tracing(cli.log_format());
    certfleet_common::tls::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("certfleet: {e:#}");
            // Exit now: dropping the runtime would wait for blocking tasks, and dropping the
            // store would flush it, and either can block for good on a failed disk (the
            // supervisor restarts us to get a fresh store handle).
            std::process::exit(i32::from(cli::exit_code(&e)))
        }
    }
}

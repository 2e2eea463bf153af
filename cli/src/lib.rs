//! The `gridloop` command line: argument parsing, loading, parallel runs, reporters and exit
//! codes. The only crate that uses anyhow, prints, or decides how the process ends.

pub mod args;
pub mod bench;
pub mod broker;
pub mod calibrate;
pub mod commands;
pub mod exit;
pub mod export;
pub mod fleet;
pub mod head_end_cmd;
pub mod hil;
pub mod hil_run;
pub mod live;
pub mod load;
pub mod meter;
pub mod mqtt_links;
pub mod report_dir;
pub mod run;
pub mod staged;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command};

/// Parse the command line, run the command, print any error, and return the exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout with 0; usage errors to stderr with 2.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::INVALID_INPUT
            } else {
                exit::SUCCESS
            });
        }
    };
    init_logging();
    run::install_panic_hook();
    let result = match &cli.command {
        Command::Run(args) => run::run(args, run::stdout_color(cli.color)),
        Command::Validate(args) => commands::validate(args),
        Command::List(args) => commands::list(args),
        Command::Schema => commands::schema(),
        Command::Export(args) => export::export(args),
        Command::Meter(args) => meter::meter(args),
        Command::Fleet(args) => fleet::fleet(args),
        Command::Bench(args) => bench::bench(args),
        Command::Calibrate(args) => calibrate::calibrate(args),
        Command::Broker(args) => broker::broker(args),
        Command::HeadEnd(args) => head_end_cmd::head_end(args),
        Command::Hil(args) => hil::hil(args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            tracing::debug!(code = failure.code, "command failed");
            eprintln!("error: {:#}", failure.error);
            ExitCode::from(failure.code)
        }
    }
}

/// tracing to stderr; filter from `GRIDLOOP_LOG`, else `RUST_LOG`, else `warn` (rumqttd off).
fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("GRIDLOOP_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        // The embedded broker (rumqttd) logs every closed connection as an error: quiet unless asked.
        .unwrap_or_else(|_| EnvFilter::new("warn,rumqttd=off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

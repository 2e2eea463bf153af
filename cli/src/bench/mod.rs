//! `gridloop bench`: benchmarks that measure this machine, never pass/fail tests.
//!
//! - [`procfs`]: RSS and CPU time of a process from `/proc`.
//! - [`modbus_load`]: a built-in closed-loop Modbus/TCP load generator.
//! - [`fleet`]: `gridloop bench fleet` (meters, brokers, delivery, RSS, Modbus efficiency).

pub mod fleet;
pub mod modbus_load;
pub mod procfs;

use clap::{Args, Subcommand};

use crate::exit::CommandResult;

/// `gridloop bench …`
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum BenchCommand {
    /// Meters publishing at 1 Hz to a broker with a subscriber counting every message, RSS per
    /// meter, and a Modbus/TCP load on the fleet's gateways (requests per server CPU-second)
    Fleet(fleet::BenchFleetArgs),
}

/// Run the benchmark named.
pub fn bench(args: &BenchArgs) -> CommandResult {
    match &args.what {
        BenchCommand::Fleet(a) => fleet::bench_fleet(a),
    }
}

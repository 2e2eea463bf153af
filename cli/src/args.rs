//! Command-line arguments (clap derive): every flag is defined once here.

use std::num::NonZeroUsize;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Where `run`, `validate` and `list` look when no path is given.
pub const DEFAULT_PATH: &str = "scenarios/library";

const EXIT_CODES: &str = "\
Exit codes:
  0  all expectations passed
  1  an expectation failed (or a scenario's run panicked)
  2  invalid input or usage (bad flag, missing path, invalid scenario file)
  3  environment unavailable (e.g. a report file cannot be written)
  4  no scenario ran (none found, or --filter matched nothing)

Logging: GRIDLOOP_LOG (or RUST_LOG) takes a tracing filter, e.g. GRIDLOOP_LOG=debug; default warn.";

/// Grid-simulation and hardware-in-the-loop test harness for smart-meter voltage monitoring.
///
/// Scenario files (YAML) describe a grid, meter groups, disturbances and network faults, and
/// what must happen. `gridloop run` simulates them in virtual time (sim mode, deterministic
/// for a seed) and judges every expectation.
#[derive(Debug, Parser)]
#[command(name = "gridloop", version, after_help = EXIT_CODES)]
pub struct Cli {
    /// When to colour the terminal summary (auto: stdout is a terminal and NO_COLOR is unset)
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto, global = true)]
    pub color: ColorChoice,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run scenarios in sim mode and judge their expectations
    #[command(after_help = EXIT_CODES)]
    Run(RunArgs),
    /// Check scenario files without running them (prints `ok  <file>  <name>` per valid file)
    Validate(PathArgs),
    /// List scenarios: name, tags, grid time, meters, groups, file
    List(ListArgs),
    /// Print the JSON Schema of scenario files (for editors)
    Schema,
    /// Write a meter group's probe waveform as COMTRADE files (.cfg + .dat)
    Export(crate::export::ExportArgs),
}

#[derive(Debug, Clone, Args)]
pub struct PathArgs {
    /// Scenario files or folders (folders are searched recursively for *.yaml and *.yml)
    #[arg(value_name = "PATH", default_value = DEFAULT_PATH)]
    pub paths: Vec<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct FilterArgs {
    /// Only scenarios tagged TAG; repeat to accept any of several tags
    #[arg(long = "filter", value_name = "TAG")]
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub paths: PathArgs,

    #[command(flatten)]
    pub filter: FilterArgs,

    /// Use this seed for every scenario instead of each file's own `seed`
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,

    /// Write JUnit XML here (one testsuite per scenario, one testcase per expectation)
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,

    /// Write the JSON results document here (byte-identical for the same scenarios and seeds)
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Write summary.md (Markdown for CI job summaries and PR comments), results.json and
    /// junit.xml into this directory (created with its parents)
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,

    /// Scenarios run in parallel on this many threads [default: all cores]
    #[arg(long, short = 'j', value_name = "N")]
    pub jobs: Option<NonZeroUsize>,

    /// Print only failing scenarios and the totals; no progress bar
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub paths: PathArgs,

    #[command(flatten)]
    pub filter: FilterArgs,
}

impl FilterArgs {
    /// A scenario passes the filter if it has any of the tags (or no filter was given).
    pub fn accepts(&self, tags: &[String]) -> bool {
        self.tags.is_empty() || tags.iter().any(|t| self.tags.contains(t))
    }

    pub fn describe(&self) -> String {
        self.tags.join(", ")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_defaults_and_repeated_filters() {
        let cli =
            Cli::try_parse_from(["gridloop", "run", "--filter", "sag", "--filter", "thd"]).unwrap();
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert_eq!(run.paths.paths, [PathBuf::from(DEFAULT_PATH)]);
        assert_eq!(run.filter.tags, ["sag", "thd"]);
        assert!(run.filter.accepts(&["x".into(), "thd".into()]));
        assert!(!run.filter.accepts(&["x".into()]));
        assert!(!run.filter.accepts(&[]));
        assert!(FilterArgs { tags: vec![] }.accepts(&[]));
        assert_eq!(run.seed, None);
        assert_eq!(run.jobs, None);
    }

    #[test]
    fn usage_errors_are_errors() {
        for argv in [
            &["gridloop"][..],
            &["gridloop", "run", "--jobs", "0"],
            &["gridloop", "run", "--seed", "-1"],
            &["gridloop", "frobnicate"],
            &["gridloop", "run", "--bogus"],
        ] {
            let err = Cli::try_parse_from(argv).unwrap_err();
            assert!(err.use_stderr(), "{argv:?}");
            assert_eq!(err.exit_code(), 2, "{argv:?}");
        }
    }
}

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
    /// Serve a scenario's meter(s) over Modbus/TCP in real time (prints the bound address)
    Meter(MeterArgs),
    /// Run many meters of a scenario in this process (Modbus ports or gateways, MQTT)
    Fleet(crate::fleet::FleetArgs),
    /// Benchmarks of this machine (figures, not verdicts)
    Bench(crate::bench::BenchArgs),
    /// Calibrate a meter's voltage gains to a reference voltage over Modbus/TCP
    Calibrate(crate::calibrate::CalibrateArgs),
    /// Run the embedded MQTT broker (rumqttd) standalone (prints the bound address)
    Broker(crate::broker::BrokerArgs),
    /// Run the head-end: subscribe to meters' MQTT telemetry, poll their Modbus registers,
    /// raise and store alarms
    HeadEnd(crate::head_end_cmd::HeadEndArgs),
    /// Hardware in the loop: AC sources and meters of a lab profile
    Hil(HilArgs),
}

/// `gridloop hil`.
#[derive(Debug, Clone, Args)]
pub struct HilArgs {
    #[command(subcommand)]
    pub command: HilCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum HilCommand {
    /// Identify a lab's instruments (*IDN?, SYST:ERR?) and meters (firmware, voltages,
    /// frequency, encoding handshake); emulated entries are started in-process
    #[command(after_help = HIL_PROBE_EXIT_CODES)]
    Probe(HilProbeArgs),
}

const HIL_PROBE_EXIT_CODES: &str = "\
Exit codes:
  0  every instrument and meter was reached; error queues empty, encodings verified
  1  everything was reached, but an instrument reported errors, a meter answered with an
     exception, or a meter's encoding is not the lab's (mismatch, ambiguous, undetermined)
  2  invalid lab profile (the message names file:line:column and the field)
  3  something could not be reached (NOT REACHED lines), or an emulator could not start";

/// `gridloop hil probe`.
#[derive(Debug, Clone, Args)]
pub struct HilProbeArgs {
    /// The lab profile (YAML; see lab/emulated.yaml)
    #[arg(long, value_name = "FILE")]
    pub lab: PathBuf,
}

/// `gridloop meter`: one meter, or a gateway of several, running a scenario in real time.
#[derive(Debug, Clone, Args)]
pub struct MeterArgs {
    /// The scenario file
    #[arg(value_name = "SCENARIO", required_unless_present = "scenario_flag")]
    pub scenario: Option<PathBuf>,

    /// The scenario file (same as the positional SCENARIO)
    #[arg(long = "scenario", value_name = "FILE", conflicts_with = "scenario")]
    pub scenario_flag: Option<PathBuf>,

    /// Meter group to run [default: the scenario's first group]
    #[arg(long, value_name = "NAME")]
    pub group: Option<String>,

    /// Modbus/TCP listen address (port 0 picks a free port; the bound address is printed)
    #[arg(
        long,
        visible_alias = "modbus",
        value_name = "HOST:PORT",
        default_value = "127.0.0.1:502"
    )]
    pub listen: std::net::SocketAddr,

    /// Which meter of the group to run: its index (0-based; its seed, values and trips are those
    /// sim mode computes for that meter). With --units N, meters ID..ID+N
    #[arg(long, value_name = "ID", default_value_t = 0)]
    pub id: u32,

    /// Meters behind the listener: 1 answers every unit id; N > 1 is a gateway with unit ids
    /// 1..=N (meters ID..ID+N of the group; unknown ids get exception 0x0B)
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=247))]
    pub units: u8,

    /// Register map file: `register_map.conf` (`NAME = 0x0024 [ENCODING]` lines), or YAML
    /// for .yaml/.yml [default: the documented map]
    #[arg(long, value_name = "FILE")]
    pub map: Option<PathBuf>,

    /// Encoding of analog registers: float32[:ORDER], int16:SCALE or uint32:SCALE[:ORDER]
    /// [default: the group's `encoding.registers`/`word_order`]
    #[arg(long, value_name = "ENCODING")]
    pub encoding: Option<String>,

    /// Stop after this much grid time (e.g. 10s) instead of at the scenario's end
    #[arg(long, value_name = "DURATION")]
    pub duration: Option<String>,

    /// After the scenario ends, keep serving the final registers this long (e.g. 30s)
    #[arg(long, value_name = "DURATION")]
    pub linger: Option<String>,

    /// Start the scenario clock at the first client connection instead of at once
    #[arg(long)]
    pub wait_for_client: bool,

    /// Pacing step in milliseconds: how often meters catch up with the wall clock
    #[arg(long, value_name = "MS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub step_ms: u64,

    /// Close a Modbus connection that sends nothing for this long, between requests or inside
    /// a partial frame (e.g. 30s; 0 = never)
    #[arg(long, value_name = "DURATION", default_value = "60s")]
    pub idle_timeout: String,

    /// The meters' event log: one line per trip and clear, appended (`none` disables)
    #[arg(long, value_name = "FILE", default_value = "voltage_events.log")]
    pub event_log: PathBuf,

    #[command(flatten)]
    pub mqtt: crate::mqtt_links::MqttArgs,
}

impl MeterArgs {
    /// The scenario path, however it was given.
    pub fn scenario_path(&self) -> Option<&PathBuf> {
        self.scenario.as_ref().or(self.scenario_flag.as_ref())
    }
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

    /// `sim`: virtual time, modelled network (fast, deterministic). `live`: real time on real
    /// sockets — broker, virtual meters and the head-end — judged by the same expectations
    /// (scenarios run one after another). `hil`: the supply programmed into the lab's AC
    /// sources over SCPI (`--lab`; emulated labs for now) feeds the meters, then as live
    #[arg(long, value_enum, default_value_t = Mode::Sim)]
    pub mode: Mode,

    /// Live mode: pacing step in milliseconds (how often meters catch up with the wall clock;
    /// a trip is seen at most one step after it happens)
    #[arg(long, value_name = "MS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub step_ms: u64,

    /// Live mode: longest wait at the end for the head-end to receive what the broker
    /// acknowledged
    #[arg(long, value_name = "SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub drain_s: u64,

    /// Live mode: the head-end polls every meter's Modbus registers this often (after an
    /// encoding handshake); 0 = MQTT only
    #[arg(long, value_name = "MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    pub poll_ms: u64,

    /// Live mode: head-end instances sharing the fleet by substation (each its own MQTT
    /// connection and alarm store) [default: one per substation]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub head_ends: Option<u16>,

    /// HIL mode: the lab profile (instruments, meters, safety limits); `lab/emulated.yaml`
    /// runs the whole HIL path on emulators
    #[arg(long, value_name = "FILE")]
    pub lab: Option<PathBuf>,

    /// Live mode: keep the head-end's alarm stores (JSON Lines, one alarm per line) in this
    /// directory, one `<scenario>.<instance>.alarms.jsonl` per scenario and instance [default: a scratch directory,
    /// removed after the run]
    #[arg(long, value_name = "DIR")]
    pub alarm_store: Option<PathBuf>,

    #[command(flatten)]
    pub mqtt: crate::mqtt_links::MqttArgs,
}

/// How a scenario is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    Sim,
    Live,
    Hil,
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
    fn meter_arguments() {
        let cli = Cli::try_parse_from([
            "gridloop",
            "meter",
            "s.yaml",
            "--listen",
            "127.0.0.1:0",
            "--units",
            "2",
        ])
        .unwrap();
        let Command::Meter(m) = cli.command else {
            panic!("not meter")
        };
        assert_eq!(m.scenario_path(), Some(&PathBuf::from("s.yaml")));
        assert_eq!(m.listen.port(), 0);
        assert_eq!(m.units, 2);
        let cli = Cli::try_parse_from([
            "gridloop",
            "meter",
            "--scenario",
            "s.yaml",
            "--modbus",
            "127.0.0.1:1502",
        ])
        .unwrap();
        let Command::Meter(m) = cli.command else {
            panic!("not meter")
        };
        assert_eq!(m.scenario_path(), Some(&PathBuf::from("s.yaml")));
        assert_eq!(m.listen.port(), 1502);
        assert_eq!(m.units, 1);
        for argv in [
            &["gridloop", "meter"][..],
            &["gridloop", "meter", "s.yaml", "--units", "0"],
            &["gridloop", "meter", "s.yaml", "--units", "248"],
            &["gridloop", "meter", "s.yaml", "--listen", "nowhere"],
            &["gridloop", "meter", "s.yaml", "--scenario", "t.yaml"],
        ] {
            assert_eq!(
                Cli::try_parse_from(argv).unwrap_err().exit_code(),
                2,
                "{argv:?}"
            );
        }
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

//! Consumers of a gridloop run: one typed event stream ([`RunEvent`]) feeds many
//! [`Reporter`]s — the terminal summary, JUnit XML, the versioned JSON results document and the
//! Markdown summary for CI job summaries and pull-request comments, and the self-contained
//! HTML page with inline SVG [`plots`].
//!
//! Every reporter writes to an `impl Write`, so each is tested against a `Vec<u8>`. Reporters
//! know nothing about how the events were produced (sim, live or HIL; threads or not).
//!
//! [`comtrade`] writes waveforms (not results) as IEEE C37.111 COMTRADE files.

use std::time::Duration;

use sim_core::outcome::ScenarioOutcome;
use sim_core::Seconds;

pub mod comtrade;
pub mod comtrade_read;
pub mod html;
pub mod json;
pub mod junit;
pub mod markdown;
pub mod plots;
pub mod terminal;

#[cfg(test)]
mod testdata;

pub use html::HtmlReporter;
pub use json::{JsonReporter, JSON_FORMAT, JSON_VERSION};
pub use junit::JunitReporter;
pub use markdown::{shell_quote, MarkdownReporter};
pub use terminal::TerminalReporter;

/// One step of a run, in the order a reporter sees them: `RunStarted`, then one
/// `ScenarioFinished` per scenario **in input order**, then `RunFinished`.
#[derive(Debug, Clone, Copy)]
pub enum RunEvent<'a> {
    /// The run is about to start `scenarios` scenarios.
    RunStarted { scenarios: usize },
    /// One scenario finished. `wall` is the wall-clock time it took, when the producer
    /// measured it; deterministic reporters ignore it.
    ScenarioFinished {
        outcome: &'a ScenarioOutcome,
        wall: Option<Duration>,
    },
    /// All scenarios finished; `summary` holds every outcome in input order.
    RunFinished { summary: &'a RunSummary },
}

/// A consumer of the event stream.
pub trait Reporter {
    /// Handle one event. An error means the report could not be written.
    fn on_event(&mut self, event: &RunEvent<'_>) -> Result<(), ReportError>;
}

/// Why a report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("failed to write report: {0}")]
    Io(#[from] std::io::Error),
    #[error("failed to serialize JUnit XML: {0}")]
    Junit(#[from] quick_junit::SerializeError),
    #[error("failed to serialize JSON results: {0}")]
    Json(#[from] serde_json::Error),
    #[error("failed to draw a plot: {0}")]
    Plot(String),
}

/// The whole run: every outcome in input order, and how it was invoked.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    /// Outcomes in input order (the order scenario files were given / discovered).
    pub outcomes: Vec<ScenarioOutcome>,
    /// `--seed` given on the command line: it replaced every scenario's own seed.
    pub seed_override: Option<u64>,
    /// The command line that produced the run, shell-quoted (`gridloop run … --report out`),
    /// when the producer knows it; reports show it so the run can be repeated exactly.
    pub command: Option<String>,
}

/// Counts over a [`RunSummary`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RunCounts {
    pub scenarios: usize,
    pub scenarios_passed: usize,
    pub scenarios_failed: usize,
    pub expectations: usize,
    pub expectations_passed: usize,
    pub expectations_failed: usize,
}

impl RunSummary {
    pub fn new(outcomes: Vec<ScenarioOutcome>, seed_override: Option<u64>) -> Self {
        RunSummary {
            outcomes,
            seed_override,
            command: None,
        }
    }

    /// The same summary, recording the command line that produced it.
    pub fn with_command(mut self, command: impl Into<String>) -> Self {
        self.command = Some(command.into());
        self
    }

    pub fn counts(&self) -> RunCounts {
        let mut c = RunCounts {
            scenarios: self.outcomes.len(),
            ..RunCounts::default()
        };
        for o in &self.outcomes {
            if o.passed() {
                c.scenarios_passed += 1;
            } else {
                c.scenarios_failed += 1;
            }
            let failed = o.failed_count();
            c.expectations += o.expectations.len();
            c.expectations_failed += failed;
            c.expectations_passed += o.expectations.len() - failed;
        }
        c
    }

    /// True when every expectation of every scenario held.
    pub fn passed(&self) -> bool {
        self.outcomes.iter().all(ScenarioOutcome::passed)
    }

    /// Outcomes with at least one failed expectation, in input order.
    pub fn failed(&self) -> impl Iterator<Item = &ScenarioOutcome> {
        self.outcomes.iter().filter(|o| !o.passed())
    }
}

/// A grid-time span for people: `250 ms`, `40 s`, `2.5 min`, `8 h`.
///
/// Deterministic (fixed rules, at most three decimals, trailing zeros trimmed).
pub fn format_duration(s: Seconds) -> String {
    if !s.is_finite() {
        return format!("{s} s");
    }
    let a = s.abs();
    let (value, unit) = if a == 0.0 {
        (0.0, "s")
    } else if a < 1.0 {
        (s * 1000.0, "ms")
    } else if a < 120.0 {
        (s, "s")
    } else if a < 7200.0 {
        (s / 60.0, "min")
    } else {
        (s / 3600.0, "h")
    };
    format!("{} {unit}", trim_decimals(value, 3))
}

/// `value` with at most `decimals` decimals and no trailing zeros (`1.500` → `1.5`).
pub fn trim_decimals(value: f64, decimals: usize) -> String {
    let s = format!("{value:.decimals$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        &s
    };
    if s == "-0" {
        "0".to_owned()
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_split_passed_and_failed() {
        let s = RunSummary::new(vec![testdata::passing(), testdata::failing()], None);
        let c = s.counts();
        assert_eq!(
            c,
            RunCounts {
                scenarios: 2,
                scenarios_passed: 1,
                scenarios_failed: 1,
                expectations: 5,
                expectations_passed: 3,
                expectations_failed: 2,
            }
        );
        assert!(!s.passed());
        assert_eq!(
            s.failed().map(|o| o.name.as_str()).collect::<Vec<_>>(),
            ["thd-over-limit"]
        );
        assert!(RunSummary::new(vec![testdata::passing()], None).passed());
        assert!(RunSummary::new(vec![], None).passed());
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(format_duration(0.0), "0 s");
        assert_eq!(format_duration(0.2), "200 ms");
        assert_eq!(format_duration(0.0166666), "16.667 ms");
        assert_eq!(format_duration(40.0), "40 s");
        assert_eq!(format_duration(119.5), "119.5 s");
        assert_eq!(format_duration(150.0), "2.5 min");
        assert_eq!(format_duration(8.0 * 3600.0), "8 h");
        assert_eq!(trim_decimals(-0.0001, 3), "0");
        assert_eq!(trim_decimals(10.0, 3), "10");
    }
}

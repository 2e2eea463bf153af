//! Results of running one scenario: what reporters consume. Deterministic for a seed: nothing
//! here depends on wall-clock time.

use crate::time::Seconds;

/// The verdict on one expectation, with measured against expected in words and numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpectationOutcome {
    /// Position in the scenario's `expect` list.
    pub index: usize,
    /// Expectation kind as written in YAML (`trip`, `no_trip`, `alarm_latency`, …).
    pub kind: &'static str,
    /// One-line description, e.g. `trip UV_TRIP_0x01 on L1 in feeder-a within 50 ms`.
    pub label: String,
    pub passed: bool,
    /// What was expected, e.g. `≤ 50.0 ms`.
    pub expected: String,
    /// What was measured, e.g. `worst 9.1 ms (meter feeder-a/17)`.
    pub measured: String,
    /// Further detail for failures (first offending meters, …).
    pub detail: Option<String>,
}

/// Latency percentiles in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LatencySummary {
    pub count: u64,
    pub p50: Seconds,
    pub p99: Seconds,
    pub max: Seconds,
}

/// Counters for the whole run.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunStats {
    pub meters: u64,
    /// Samples synthesized (all channels, waveform fidelity).
    pub samples: u64,
    /// Half-cycle values evaluated (all channels, both fidelities).
    pub half_cycles: u64,
    pub trips: u64,
    pub clears: u64,
    /// Messages (readings + events) the meters produced.
    pub produced: u64,
    /// Distinct messages the head-end received.
    pub delivered: u64,
    /// Copies the head-end discarded as duplicates of (meter, seq).
    pub duplicates: u64,
    /// Messages dropped by store-and-forward ring overflow (counted by the meters).
    pub overflowed: u64,
    /// Messages still in meter rings when the run ended (link still down).
    pub buffered_at_end: u64,
    /// Messages neither delivered, overflowed nor buffered: must be 0.
    pub unexplained_loss: u64,
    pub alarms: u64,
    pub alarm_latency: LatencySummary,
}

/// A notable moment for the timeline in reports.
#[derive(Debug, Clone, PartialEq)]
pub struct TimelineEntry {
    pub at: Seconds,
    pub what: String,
}

/// Everything a reporter needs about one scenario run.
#[derive(Debug, Clone, PartialEq)]
pub struct ScenarioOutcome {
    pub name: String,
    /// Path of the scenario file, as given on the command line.
    pub file: String,
    pub description: String,
    pub tags: Vec<String>,
    pub seed: u64,
    pub mode: &'static str,
    /// Grid time simulated, s.
    pub duration: Seconds,
    pub stats: RunStats,
    pub expectations: Vec<ExpectationOutcome>,
    /// Disturbance onsets, network faults, first trips and alarms (bounded length).
    pub timeline: Vec<TimelineEntry>,
}

impl ScenarioOutcome {
    pub fn passed(&self) -> bool {
        self.expectations.iter().all(|e| e.passed)
    }

    pub fn failed_count(&self) -> usize {
        self.expectations.iter().filter(|e| !e.passed).count()
    }
}

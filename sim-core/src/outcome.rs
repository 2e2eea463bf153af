//! Results of running one scenario: what reporters consume. Deterministic for a seed: nothing
//! here depends on wall-clock time.

use crate::grid::Phase;
use crate::scenario::{EventCode, Thresholds};
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
    /// Series for plots (not part of the JSON results document).
    pub plots: PlotData,
}

/// Most points kept per phase per group in [`GroupPlot::rms`]: long runs keep the minimum and
/// maximum of each of `RMS_PLOT_MAX / 2` equal time buckets.
pub const RMS_PLOT_MAX: usize = 4000;
/// Most trip/clear markers kept per group (the first ones).
pub const EVENTS_PLOT_MAX: usize = 2000;
/// Most alarm latencies kept per group (evenly spaced order statistics beyond that).
pub const LATENCIES_PLOT_MAX: usize = 10_000;
/// Time buckets over the scenario in which [`GroupPlot::trips`] counts the group's trips.
pub const TRIP_BUCKETS: usize = 500;

/// What plots are drawn from, per meter group. Bounded: see [`RMS_PLOT_MAX`],
/// [`EVENTS_PLOT_MAX`], [`LATENCIES_PLOT_MAX`], [`EVENT_WAVEFORMS_MAX`] and
/// [`EVENT_WAVEFORM_SAMPLES_MAX`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PlotData {
    pub groups: Vec<GroupPlot>,
}

/// One meter group's series: its probe meter (meter 0) and the head-end's trip alarms.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupPlot {
    pub name: String,
    /// The group's trip limits.
    pub thresholds: Thresholds,
    /// Nominal phase voltage, V.
    pub nominal: f64,
    /// Per phase (index = channel): (window end, 10/12-cycle RMS in V) of the probe meter, in
    /// time order, decimated to at most [`RMS_PLOT_MAX`] points by min/max per bucket.
    pub rms: Vec<Vec<(Seconds, f64)>>,
    /// The probe meter's trips and clears, in time order.
    pub events: Vec<PlotEvent>,
    /// (head-end receive time, onset-to-alarm latency) of the group's trip alarms, in receive
    /// order.
    pub alarm_latencies: Vec<(Seconds, Seconds)>,
    /// Meters in the group.
    pub meters: u32,
    /// Trips of all the group's meters: (bucket end, trips in the bucket) for each of the
    /// [`TRIP_BUCKETS`] equal time buckets over the scenario that holds any, in time order.
    pub trips: Vec<(Seconds, u64)>,
    /// Per phase (index = channel): (window end, THD in %) of the probe meter per 10/12-cycle
    /// window, in time order, decimated like [`GroupPlot::rms`] (at most [`RMS_PLOT_MAX`]).
    pub thd: Vec<Vec<(Seconds, f64)>>,
    /// The supply at the probe meter's terminals around the first [`EVENT_WAVEFORMS_MAX`]
    /// voltage-disturbance onsets of the group (see [`EventWaveform`]).
    pub event_waveforms: Vec<EventWaveform>,
    /// Onsets among the first [`EVENT_WAVEFORMS_MAX`] with no event waveform, because
    /// reaching them would replay more than [`EVENT_WAVEFORM_NOISE_DRAWS_MAX`] noise draws:
    /// (onset, draws needed).
    pub event_waveforms_omitted: Vec<(Seconds, u64)>,
}

/// Most event waveforms kept per group (the first onsets).
pub const EVENT_WAVEFORMS_MAX: usize = 3;
/// Most samples kept per phase in one [`EventWaveform`] (decimated beyond).
pub const EVENT_WAVEFORM_SAMPLES_MAX: usize = 2000;
/// Most noise draws replayed to reach a group's event-waveform windows: the synthesizer skips
/// the samples before a window without computing them, but the noise generator's stream has
/// to be drawn through wherever noise is active (one draw per sample and phase). An onset
/// whose window would need more is not drawn and is listed in
/// [`GroupPlot::event_waveforms_omitted`]. 2·10⁸ draws take about 0.5 s in a release build
/// (1.4·10⁸ measured at 0.35 s), e.g. 1.45 h of noise on 3 phases at 12.8 kHz.
pub const EVENT_WAVEFORM_NOISE_DRAWS_MAX: u64 = 200_000_000;

/// The sample-level waveform of a group's probe meter (the supply model with its noise, before
/// the meter's front end) from 2 cycles before a disturbance onset to 6 cycles after it,
/// clamped to the scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct EventWaveform {
    /// The disturbance onset, s since scenario start.
    pub onset: Seconds,
    /// Time of the first sample, s since scenario start.
    pub start: Seconds,
    /// Time between kept samples, s (1 / sample rate unless decimated).
    pub step: Seconds,
    /// Per phase (index = channel): instantaneous voltage, V.
    pub samples: Vec<Vec<f32>>,
}

/// A trip or clear of a probe meter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlotEvent {
    pub at: Seconds,
    pub code: EventCode,
    pub phase: Phase,
    /// The Urms(1/2) value that caused it, V.
    pub value: f64,
}

impl ScenarioOutcome {
    pub fn passed(&self) -> bool {
        self.expectations.iter().all(|e| e.passed)
    }

    pub fn failed_count(&self) -> usize {
        self.expectations.iter().filter(|e| !e.passed).count()
    }
}

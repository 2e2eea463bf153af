//! The versioned JSON results document (`"format": "gridloop-results"`, `"version": 1`).
//!
//! Byte-identical for identical outcomes: nothing from the wall clock, struct field order is
//! the output order, floats are written by serde_json's shortest round-trip formatting, and
//! latencies converted to milliseconds are rounded to 1 ns so unit conversion adds no noise.

use std::io::Write;

use serde::{Deserialize, Serialize};
use sim_core::outcome::{RunStats, ScenarioOutcome};

use crate::{ReportError, Reporter, RunEvent, RunSummary};

/// Value of the document's `format` field.
pub const JSON_FORMAT: &str = "gridloop-results";
/// Value of the document's `version` field; bumped on any incompatible change.
pub const JSON_VERSION: u32 = 1;

/// The whole document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultsDocument {
    pub format: String,
    pub version: u32,
    pub gridloop_version: String,
    pub scenarios: Vec<ScenarioResult>,
    pub summary: SummaryResult,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioResult {
    pub name: String,
    pub file: String,
    pub description: String,
    pub tags: Vec<String>,
    pub seed: u64,
    pub mode: String,
    /// Grid time simulated, s.
    pub duration_s: f64,
    pub passed: bool,
    pub stats: StatsResult,
    pub expectations: Vec<ExpectationResult>,
    pub timeline: Vec<TimelineResult>,
}

/// Every `RunStats` counter; latencies in ms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsResult {
    pub meters: u64,
    pub samples: u64,
    pub half_cycles: u64,
    pub trips: u64,
    pub clears: u64,
    pub produced: u64,
    pub delivered: u64,
    pub duplicates: u64,
    pub overflowed: u64,
    pub buffered_at_end: u64,
    pub unexplained_loss: u64,
    pub alarms: u64,
    pub alarm_latency: LatencyResult,
}

/// Onset-to-alarm latency; the percentiles are `null` when no alarm was measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyResult {
    pub count: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectationResult {
    pub index: usize,
    pub kind: String,
    pub label: String,
    pub passed: bool,
    pub expected: String,
    pub measured: String,
    pub detail: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimelineResult {
    pub at_s: f64,
    pub what: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SummaryResult {
    pub scenarios: usize,
    pub scenarios_passed: usize,
    pub scenarios_failed: usize,
    pub expectations: usize,
    pub expectations_passed: usize,
    pub expectations_failed: usize,
    pub passed: bool,
    /// `--seed` that replaced every scenario's seed, if any.
    pub seed_override: Option<u64>,
}

/// Writes the document (pretty-printed, trailing newline) when the run finishes.
#[derive(Debug)]
pub struct JsonReporter<W: Write> {
    out: W,
}

impl<W: Write> JsonReporter<W> {
    pub fn new(out: W) -> Self {
        JsonReporter { out }
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

impl<W: Write> Reporter for JsonReporter<W> {
    fn on_event(&mut self, event: &RunEvent<'_>) -> Result<(), ReportError> {
        if let RunEvent::RunFinished { summary } = event {
            serde_json::to_writer_pretty(&mut self.out, &results_document(summary))?;
            writeln!(self.out)?;
            self.out.flush()?;
        }
        Ok(())
    }
}

/// The results document for a run.
pub fn results_document(summary: &RunSummary) -> ResultsDocument {
    let c = summary.counts();
    ResultsDocument {
        format: JSON_FORMAT.to_owned(),
        version: JSON_VERSION,
        gridloop_version: env!("CARGO_PKG_VERSION").to_owned(),
        scenarios: summary.outcomes.iter().map(scenario_result).collect(),
        summary: SummaryResult {
            scenarios: c.scenarios,
            scenarios_passed: c.scenarios_passed,
            scenarios_failed: c.scenarios_failed,
            expectations: c.expectations,
            expectations_passed: c.expectations_passed,
            expectations_failed: c.expectations_failed,
            passed: summary.passed(),
            seed_override: summary.seed_override,
        },
    }
}

fn scenario_result(o: &ScenarioOutcome) -> ScenarioResult {
    ScenarioResult {
        name: o.name.clone(),
        file: o.file.clone(),
        description: o.description.clone(),
        tags: o.tags.clone(),
        seed: o.seed,
        mode: o.mode.to_owned(),
        duration_s: o.duration,
        passed: o.passed(),
        stats: stats_result(&o.stats),
        expectations: o
            .expectations
            .iter()
            .map(|e| ExpectationResult {
                index: e.index,
                kind: e.kind.to_owned(),
                label: e.label.clone(),
                passed: e.passed,
                expected: e.expected.clone(),
                measured: e.measured.clone(),
                detail: e.detail.clone(),
            })
            .collect(),
        timeline: o
            .timeline
            .iter()
            .map(|t| TimelineResult {
                at_s: t.at,
                what: t.what.clone(),
            })
            .collect(),
    }
}

fn stats_result(s: &RunStats) -> StatsResult {
    let l = &s.alarm_latency;
    let ms = |v: f64| (l.count > 0 && v.is_finite()).then(|| seconds_to_ms(v));
    StatsResult {
        meters: s.meters,
        samples: s.samples,
        half_cycles: s.half_cycles,
        trips: s.trips,
        clears: s.clears,
        produced: s.produced,
        delivered: s.delivered,
        duplicates: s.duplicates,
        overflowed: s.overflowed,
        buffered_at_end: s.buffered_at_end,
        unexplained_loss: s.unexplained_loss,
        alarms: s.alarms,
        alarm_latency: LatencyResult {
            count: l.count,
            p50_ms: ms(l.p50),
            p99_ms: ms(l.p99),
            max_ms: ms(l.max),
        },
    }
}

/// Seconds to milliseconds rounded to 1 ns (0.0091 s → 9.1, not 9.100000000000001).
fn seconds_to_ms(s: f64) -> f64 {
    (s * 1e9).round() / 1e6
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::testdata;

    fn render(outcomes: Vec<ScenarioOutcome>, seed_override: Option<u64>) -> Vec<u8> {
        let mut r = JsonReporter::new(Vec::new());
        let summary = RunSummary::new(outcomes, seed_override);
        r.on_event(&RunEvent::RunStarted {
            scenarios: summary.outcomes.len(),
        })
        .unwrap();
        for o in &summary.outcomes {
            let wall = Some(std::time::Duration::from_millis(123));
            r.on_event(&RunEvent::ScenarioFinished { outcome: o, wall })
                .unwrap();
        }
        assert!(r.out.is_empty(), "written only at RunFinished");
        r.on_event(&RunEvent::RunFinished { summary: &summary })
            .unwrap();
        r.into_inner()
    }

    #[test]
    fn document_fields_and_numbers() {
        let bytes = render(vec![testdata::passing(), testdata::failing()], Some(5));
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["format"], "gridloop-results");
        assert_eq!(v["version"], 1);
        // Field order in the bytes is the declared order (serde_json's Value would sort it).
        let text = std::str::from_utf8(&bytes).unwrap();
        let at = |k: &str| text.find(&format!("\n  \"{k}\": ")).unwrap();
        let order = [
            "format",
            "version",
            "gridloop_version",
            "scenarios",
            "summary",
        ]
        .map(at);
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
        let s0 = &v["scenarios"][0];
        assert_eq!(s0["name"], "sag-70pct-10-cycles");
        assert_eq!(s0["seed"], 42);
        assert_eq!(s0["duration_s"], 40.0);
        assert_eq!(s0["passed"], true);
        assert_eq!(s0["stats"]["samples"], 1_536_000_000_u64);
        assert_eq!(s0["stats"]["alarm_latency"]["p99_ms"], 9.1);
        assert_eq!(s0["stats"]["alarm_latency"]["p50_ms"], 7.1);
        assert_eq!(s0["timeline"][1]["at_s"], 1.0021);
        let s1 = &v["scenarios"][1];
        assert_eq!(s1["passed"], false);
        assert_eq!(
            s1["stats"]["alarm_latency"]["p99_ms"],
            serde_json::Value::Null
        );
        assert_eq!(s1["expectations"][2]["kind"], "delivered");
        assert_eq!(s1["expectations"][2]["detail"], serde_json::Value::Null);
        assert_eq!(s1["expectations"][0]["measured"], "6.403 %");
        let sum = &v["summary"];
        assert_eq!(sum["scenarios"], 2);
        assert_eq!(sum["scenarios_failed"], 1);
        assert_eq!(sum["expectations_passed"], 3);
        assert_eq!(sum["expectations_failed"], 2);
        assert_eq!(sum["passed"], false);
        assert_eq!(sum["seed_override"], 5);
        assert!(bytes.ends_with(b"}\n"));
    }

    #[test]
    fn round_trips_through_the_dto() {
        let bytes = render(vec![testdata::passing(), testdata::failing()], None);
        let doc: ResultsDocument = serde_json::from_slice(&bytes).unwrap();
        let summary = RunSummary::new(vec![testdata::passing(), testdata::failing()], None);
        assert_eq!(doc, results_document(&summary));
        assert_eq!(doc.scenarios[1].expectations.len(), 3);
    }

    #[test]
    fn identical_outcomes_identical_bytes() {
        let a = render(vec![testdata::passing(), testdata::failing()], None);
        let b = render(vec![testdata::passing(), testdata::failing()], None);
        assert_eq!(a, b);
        let mut other = testdata::passing();
        other.stats.alarm_latency.p99 = 0.0092;
        assert_ne!(a, render(vec![other, testdata::failing()], None));
    }

    #[test]
    fn ms_conversion_is_clean() {
        assert_eq!(seconds_to_ms(0.0091), 9.1);
        assert_eq!(seconds_to_ms(0.05), 50.0);
        assert_eq!(seconds_to_ms(1.234_567_891_2), 1234.567891);
    }

    #[test]
    fn snapshot() {
        let bytes = render(vec![testdata::passing(), testdata::failing()], None);
        insta::assert_snapshot!(String::from_utf8(bytes).unwrap());
    }
}

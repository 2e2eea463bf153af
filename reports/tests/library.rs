//! Snapshots of every file report (`summary.md`, JUnit XML, `results.json`) for real library
//! scenarios, loaded with `scenarios::load_file` and run with `sim_core::harness::run`, plus a
//! run with a deliberately failing variant so the failure rendering is pinned too.
//!
//! The outputs are deterministic (no wall clock, seeded runs), so the snapshots are exact.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::OnceLock;

use reports::{JsonReporter, JunitReporter, MarkdownReporter, Reporter, RunEvent, RunSummary};
use sim_core::outcome::ScenarioOutcome;
use sim_core::scenario::Expectation;
use sim_core::Scenario;

/// Library files, relative to the workspace root (as `gridloop run` shows them from there).
const FILES: [&str; 3] = [
    "scenarios/library/sags-swells/sag-75pct-12-cycles.yaml",
    "scenarios/library/network/rf-loss-overflow.yaml",
    "scenarios/library/harmonics/thd-3rd-5th.yaml",
];

fn load(file: &str) -> Scenario {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(file);
    scenarios::load_file(&path).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// The three library scenarios, run once per test process.
fn library_outcomes() -> &'static [ScenarioOutcome] {
    static OUTCOMES: OnceLock<Vec<ScenarioOutcome>> = OnceLock::new();
    OUTCOMES.get_or_init(|| {
        FILES
            .iter()
            .map(|f| sim_core::harness::run(&load(f), f))
            .collect()
    })
}

/// The sag scenario with two expectations made impossible: the UV trip within 5 ms (it comes
/// ≈ 12.5 ms after onset) and a half-cycle RMS of 170 V where 180 V is measured.
fn failing_outcome() -> &'static ScenarioOutcome {
    static OUTCOME: OnceLock<ScenarioOutcome> = OnceLock::new();
    OUTCOME.get_or_init(|| {
        let file = FILES[0];
        let mut s = load(file);
        s.name = "sag-75pct-12-cycles-too-strict".into();
        let mut changed = 0;
        for e in &mut s.expectations {
            match e {
                Expectation::Trip { within, .. } => {
                    *within = 0.005;
                    changed += 1;
                }
                Expectation::Measurement { expected, .. } => {
                    *expected = 170.0;
                    changed += 1;
                }
                _ => {}
            }
        }
        assert_eq!(changed, 2, "the library scenario changed shape");
        sim_core::harness::run(&s, file)
    })
}

/// Feed the whole event stream to `reporter`, as the CLI does (no wall times).
fn feed(reporter: &mut dyn Reporter, summary: &RunSummary) {
    reporter
        .on_event(&RunEvent::RunStarted {
            scenarios: summary.outcomes.len(),
        })
        .unwrap();
    for outcome in &summary.outcomes {
        reporter
            .on_event(&RunEvent::ScenarioFinished {
                outcome,
                wall: None,
            })
            .unwrap();
    }
    reporter
        .on_event(&RunEvent::RunFinished { summary })
        .unwrap();
}

/// (summary.md, junit.xml, results.json), with the crate version masked so a version bump
/// does not churn the snapshots.
fn reports_for(summary: &RunSummary) -> (String, String, String) {
    let mut md = MarkdownReporter::new(Vec::new());
    let mut junit = JunitReporter::new(Vec::new());
    let mut json = JsonReporter::new(Vec::new());
    feed(&mut md, summary);
    feed(&mut junit, summary);
    feed(&mut json, summary);
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).unwrap();
    let version = env!("CARGO_PKG_VERSION");
    let junit = text(junit.into_inner()).replace(
        &format!(r#"name="gridloop-version" value="{version}""#),
        r#"name="gridloop-version" value="[version]""#,
    );
    let json = text(json.into_inner()).replace(
        &format!(r#""gridloop_version": "{version}""#),
        r#""gridloop_version": "[version]""#,
    );
    (text(md.into_inner()), junit, json)
}

fn passing_summary() -> RunSummary {
    RunSummary::new(library_outcomes().to_vec(), None)
}

fn failing_summary() -> RunSummary {
    let mut outcomes = library_outcomes().to_vec();
    outcomes.insert(1, failing_outcome().clone());
    RunSummary::new(outcomes, None)
}

#[test]
fn library_scenarios_pass() {
    for o in library_outcomes() {
        assert!(o.passed(), "{}: {:#?}", o.name, o.expectations);
    }
    let f = failing_outcome();
    let failed: Vec<&str> = f
        .expectations
        .iter()
        .filter(|e| !e.passed)
        .map(|e| e.kind)
        .collect();
    assert_eq!(failed, ["trip", "measurement"]);
}

#[test]
fn passing_run_summary_md() {
    let (md, _, _) = reports_for(&passing_summary());
    assert!(md.starts_with("## ✅ gridloop: passed — 3 scenarios, 14 expectations"));
    insta::assert_snapshot!(md);
}

#[test]
fn passing_run_junit() {
    let (_, xml, _) = reports_for(&passing_summary());
    assert_eq!(xml.matches("<failure").count(), 0);
    insta::assert_snapshot!(xml);
}

#[test]
fn passing_run_results_json() {
    let (_, _, json) = reports_for(&passing_summary());
    insta::assert_snapshot!(json);
}

#[test]
fn failing_run_summary_md() {
    let (md, _, _) = reports_for(&failing_summary());
    assert!(md.starts_with("## ❌ gridloop: failed — 1 of 4 scenarios failed"));
    assert!(md.contains("### ❌ sag-75pct-12-cycles-too-strict"));
    insta::assert_snapshot!(md);
}

#[test]
fn failing_run_junit() {
    let (_, xml, _) = reports_for(&failing_summary());
    assert_eq!(xml.matches("<failure").count(), 2);
    insta::assert_snapshot!(xml);
}

#[test]
fn failing_run_results_json() {
    let (_, _, json) = reports_for(&failing_summary());
    insta::assert_snapshot!(json);
}

#[test]
fn reports_are_identical_for_a_rerun() {
    // A second, independent run of the same scenarios gives byte-identical reports.
    let again: Vec<ScenarioOutcome> = FILES
        .iter()
        .map(|f| sim_core::harness::run(&load(f), f))
        .collect();
    assert_eq!(
        reports_for(&RunSummary::new(again, None)),
        reports_for(&passing_summary())
    );
}

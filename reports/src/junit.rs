//! JUnit XML: one `<testsuite>` per scenario, one `<testcase>` per expectation. Deterministic:
//! no timestamps, no durations, no UUIDs, so the same outcomes give the same bytes.

use std::io::Write;

use quick_junit::{NonSuccessKind, Property, Report, TestCase, TestCaseStatus, TestSuite};
use sim_core::outcome::ScenarioOutcome;

use crate::{ReportError, Reporter, RunEvent, RunSummary};

/// Name of the `<testsuites>` element.
pub const REPORT_NAME: &str = "gridloop";

/// Writes the whole JUnit document when the run finishes.
#[derive(Debug)]
pub struct JunitReporter<W: Write> {
    out: W,
}

impl<W: Write> JunitReporter<W> {
    pub fn new(out: W) -> Self {
        JunitReporter { out }
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

impl<W: Write> Reporter for JunitReporter<W> {
    fn on_event(&mut self, event: &RunEvent<'_>) -> Result<(), ReportError> {
        if let RunEvent::RunFinished { summary } = event {
            let report = junit_report(summary);
            report.serialize(&mut self.out)?;
            writeln!(self.out)?;
            self.out.flush()?;
        }
        Ok(())
    }
}

/// The JUnit document for a run.
pub fn junit_report(summary: &RunSummary) -> Report {
    let mut report = Report::new(REPORT_NAME);
    report.add_test_suites(summary.outcomes.iter().map(test_suite));
    report
}

fn test_suite(o: &ScenarioOutcome) -> TestSuite {
    let mut suite = TestSuite::new(o.name.as_str());
    suite.add_properties([
        Property::new("seed", o.seed.to_string()),
        Property::new("mode", o.mode),
        Property::new("gridloop-version", env!("CARGO_PKG_VERSION")),
        Property::new("file", o.file.as_str()),
    ]);
    for e in &o.expectations {
        let status = if e.passed {
            TestCaseStatus::success()
        } else {
            let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
            s.set_message(format!("expected {}, measured {}", e.expected, e.measured));
            s.set_type(e.kind);
            if let Some(detail) = &e.detail {
                s.set_description(detail.as_str());
            }
            s
        };
        let mut case = TestCase::new(e.label.as_str(), status);
        case.set_classname(o.file.as_str());
        suite.add_test_case(case);
    }
    suite
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::testdata;

    fn render(outcomes: Vec<ScenarioOutcome>) -> String {
        let mut r = JunitReporter::new(Vec::new());
        let summary = RunSummary::new(outcomes, None);
        r.on_event(&RunEvent::RunStarted {
            scenarios: summary.outcomes.len(),
        })
        .unwrap();
        for o in &summary.outcomes {
            let wall = Some(std::time::Duration::from_millis(777));
            r.on_event(&RunEvent::ScenarioFinished { outcome: o, wall })
                .unwrap();
            assert!(r.out.is_empty(), "written only at RunFinished");
        }
        r.on_event(&RunEvent::RunFinished { summary: &summary })
            .unwrap();
        String::from_utf8(r.into_inner()).unwrap()
    }

    #[test]
    fn structure_counts_and_attributes() {
        let xml = render(vec![testdata::passing(), testdata::failing()]);
        assert_eq!(xml.matches("<testsuite ").count(), 2);
        assert_eq!(xml.matches("<testcase ").count(), 5);
        assert_eq!(xml.matches("<failure").count(), 2);
        assert!(
            xml.contains(r#"<testsuites name="gridloop" tests="5" failures="2" errors="0">"#),
            "{xml}"
        );
        assert!(xml.contains(r#"<testsuite name="sag-70pct-10-cycles" tests="2" disabled="0" errors="0" failures="0">"#), "{xml}");
        assert!(xml.contains(r#"<testsuite name="thd-over-limit" tests="3" disabled="0" errors="0" failures="2">"#), "{xml}");
        assert!(xml.contains(r#"<property name="seed" value="42"/>"#));
        assert!(xml.contains(r#"<property name="mode" value="sim"/>"#));
        assert!(xml.contains(&format!(
            r#"<property name="gridloop-version" value="{}"/>"#,
            env!("CARGO_PKG_VERSION")
        )));
        // Special characters in file names are escaped, not broken.
        assert!(
            xml.contains(r#"classname="tests/fixtures/thd &lt;over&gt; &amp; limit.yaml""#),
            "{xml}"
        );
        assert!(
            xml.contains(r#"message="expected 3 % ± 0.05, measured 6.403 %""#),
            "{xml}"
        );
        // Deterministic: no wall clock anywhere even though one was offered.
        assert!(!xml.contains("time="));
        assert!(!xml.contains("timestamp"));
    }

    #[test]
    fn parses_back() {
        let xml = render(vec![testdata::passing(), testdata::failing()]);
        let report = Report::deserialize_from_str(&xml).unwrap();
        assert_eq!(report.test_suites.len(), 2);
        let failing = &report.test_suites[1];
        assert_eq!(failing.name.as_str(), "thd-over-limit");
        let names: Vec<&str> = failing.test_cases.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "thd on L1 at 1.5 s",
                "no trip in feeder-a",
                "delivered, lost 0"
            ]
        );
        match &failing.test_cases[0].status {
            TestCaseStatus::NonSuccess {
                kind,
                message,
                ty,
                description,
                ..
            } => {
                assert_eq!(*kind, NonSuccessKind::Failure);
                assert_eq!(
                    message.as_ref().unwrap().as_str(),
                    "expected 3 % ± 0.05, measured 6.403 %"
                );
                assert_eq!(ty.as_ref().unwrap().as_str(), "measurement");
                assert_eq!(
                    description.as_ref().unwrap().as_str(),
                    "meter feeder-a/0: 6.403 %\nmeter feeder-a/1: 6.402 %"
                );
            }
            other => panic!("expected a failure, got {other:?}"),
        }
        let props: Vec<(&str, &str)> = failing
            .properties
            .iter()
            .map(|p| (p.name.as_str(), p.value.as_str()))
            .collect();
        assert_eq!(props[0], ("seed", "7"));
        assert_eq!(props[3], ("file", "tests/fixtures/thd <over> & limit.yaml"));
    }

    #[test]
    fn identical_outcomes_identical_bytes() {
        let a = render(vec![testdata::passing(), testdata::failing()]);
        let b = render(vec![testdata::passing(), testdata::failing()]);
        assert_eq!(a, b);
    }

    #[test]
    fn snapshot() {
        insta::assert_snapshot!(render(vec![testdata::passing(), testdata::failing()]));
    }
}

//! The human summary: a header per scenario, one aligned line per expectation with expected
//! against measured, failure detail indented beneath, and a closing count line.

use std::io::Write;

use sim_core::outcome::ScenarioOutcome;

use crate::{format_duration, ReportError, Reporter, RunEvent, RunSummary};

const GREEN: &str = "\x1b[32m";
const RED: &str = "\x1b[31m";
const BOLD: &str = "\x1b[1m";
const DIM: &str = "\x1b[2m";
const RESET: &str = "\x1b[0m";

/// Writes the terminal summary as scenarios finish (the producer sends them in input order).
#[derive(Debug)]
pub struct TerminalReporter<W: Write> {
    out: W,
    /// Plain ANSI colour codes when true (the CLI sets it for a terminal without `NO_COLOR`).
    pub color: bool,
    /// Only failing scenarios and the closing lines.
    pub quiet: bool,
}

impl<W: Write> TerminalReporter<W> {
    /// A reporter without colour that prints every scenario.
    pub fn new(out: W) -> Self {
        TerminalReporter {
            out,
            color: false,
            quiet: false,
        }
    }

    pub fn with_color(mut self, color: bool) -> Self {
        self.color = color;
        self
    }

    pub fn with_quiet(mut self, quiet: bool) -> Self {
        self.quiet = quiet;
        self
    }

    pub fn into_inner(self) -> W {
        self.out
    }

    fn paint(&self, style: &str, text: &str) -> String {
        if self.color {
            format!("{style}{text}{RESET}")
        } else {
            text.to_owned()
        }
    }

    fn scenario(
        &mut self,
        o: &ScenarioOutcome,
        wall: Option<std::time::Duration>,
    ) -> Result<(), ReportError> {
        let passed = o.passed();
        if self.quiet && passed {
            return Ok(());
        }
        let mark = if passed {
            self.paint(GREEN, "✓")
        } else {
            self.paint(&format!("{RED}{BOLD}"), "✗")
        };
        let mut meta = format!(
            "{}  seed {}  {} grid time",
            o.file,
            o.seed,
            format_duration(o.duration)
        );
        if let Some(w) = wall {
            meta.push_str(&format!("  ({:.2} s)", w.as_secs_f64()));
        }
        let line = format!(
            "{mark} {}  {}",
            self.paint(BOLD, &o.name),
            self.paint(DIM, &meta)
        );
        writeln!(self.out, "{line}")?;

        let label_w = o
            .expectations
            .iter()
            .map(|e| width(&e.label))
            .max()
            .unwrap_or(0);
        let expected_w = o
            .expectations
            .iter()
            .map(|e| width(&e.expected))
            .max()
            .unwrap_or(0);
        for e in &o.expectations {
            let status = if e.passed {
                self.paint(GREEN, "PASS")
            } else {
                self.paint(&format!("{RED}{BOLD}"), "FAIL")
            };
            let line = format!(
                "    {status}  {}  expected {}  measured {}",
                pad(&e.label, label_w),
                pad(&e.expected, expected_w),
                e.measured
            );
            writeln!(self.out, "{}", line.trim_end())?;
            if let (false, Some(detail)) = (e.passed, &e.detail) {
                for d in detail.lines() {
                    writeln!(self.out, "          {}", d.trim_end())?;
                }
            }
        }
        if o.expectations.is_empty() {
            writeln!(self.out, "    (no expectations)")?;
        }
        Ok(())
    }

    fn finished(&mut self, summary: &RunSummary) -> Result<(), ReportError> {
        let c = summary.counts();
        writeln!(self.out)?;
        if let Some(seed) = summary.seed_override {
            writeln!(self.out, "seed {seed} used for every scenario (--seed)")?;
        }
        let failed: Vec<_> = summary.failed().collect();
        if !failed.is_empty() {
            writeln!(self.out, "{}", self.paint(RED, "failed:"))?;
            for o in failed {
                writeln!(
                    self.out,
                    "    {}  {}  ({} of {} expectations failed)",
                    o.name,
                    o.file,
                    o.failed_count(),
                    o.expectations.len()
                )?;
            }
        }
        let line = format!(
            "{}, {}: {} passed, {} failed",
            plural(c.scenarios, "scenario"),
            plural(c.expectations, "expectation"),
            c.expectations_passed,
            c.expectations_failed
        );
        let style = if summary.passed() { GREEN } else { RED };
        writeln!(self.out, "{}", self.paint(style, &line))?;
        self.out.flush()?;
        Ok(())
    }
}

impl<W: Write> Reporter for TerminalReporter<W> {
    fn on_event(&mut self, event: &RunEvent<'_>) -> Result<(), ReportError> {
        match *event {
            RunEvent::RunStarted { scenarios } => {
                if !self.quiet {
                    writeln!(self.out, "running {}", plural(scenarios, "scenario"))?;
                }
                Ok(())
            }
            RunEvent::ScenarioFinished { outcome, wall } => self.scenario(outcome, wall),
            RunEvent::RunFinished { summary } => self.finished(summary),
        }
    }
}

fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// Display width in characters (labels carry `≤`, `±`, `µ`: one column each).
fn width(s: &str) -> usize {
    s.chars().count()
}

fn pad(s: &str, to: usize) -> String {
    let mut out = s.to_owned();
    out.extend(std::iter::repeat_n(' ', to.saturating_sub(width(s))));
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::testdata;

    fn render(reporter: TerminalReporter<Vec<u8>>, outcomes: Vec<ScenarioOutcome>) -> String {
        let mut reporter = reporter;
        let summary = RunSummary::new(outcomes, None);
        reporter
            .on_event(&RunEvent::RunStarted {
                scenarios: summary.outcomes.len(),
            })
            .unwrap();
        for o in &summary.outcomes {
            reporter
                .on_event(&RunEvent::ScenarioFinished {
                    outcome: o,
                    wall: None,
                })
                .unwrap();
        }
        reporter
            .on_event(&RunEvent::RunFinished { summary: &summary })
            .unwrap();
        String::from_utf8(reporter.into_inner()).unwrap()
    }

    #[test]
    fn plain_summary() {
        let text = render(
            TerminalReporter::new(Vec::new()),
            vec![testdata::passing(), testdata::failing()],
        );
        assert!(!text.contains('\x1b'), "no colour unless asked");
        assert!(text.ends_with("2 scenarios, 5 expectations: 3 passed, 2 failed\n"));
        insta::assert_snapshot!(text);
    }

    #[test]
    fn expected_and_measured_columns_align() {
        let text = render(TerminalReporter::new(Vec::new()), vec![testdata::failing()]);
        let rows: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("    PASS") || l.starts_with("    FAIL"))
            .collect();
        assert_eq!(rows.len(), 3);
        let expected_at: Vec<usize> = rows.iter().map(|r| r.find("expected").unwrap()).collect();
        let measured_at: Vec<usize> = rows
            .iter()
            .map(|r| r.chars().count() - r.split("measured").last().unwrap().chars().count())
            .collect();
        assert!(
            expected_at.iter().all(|&c| c == expected_at[0]),
            "{rows:#?}"
        );
        assert!(
            measured_at.iter().all(|&c| c == measured_at[0]),
            "{rows:#?}"
        );
        // Failure detail sits indented under its failing expectation, not under passes.
        let lines: Vec<&str> = text.lines().collect();
        let thd = lines.iter().position(|l| l.contains("thd on L1")).unwrap();
        assert_eq!(lines[thd + 1], "          meter feeder-a/0: 6.403 %");
        assert_eq!(lines[thd + 2], "          meter feeder-a/1: 6.402 %");
        assert!(lines[thd + 3].starts_with("    PASS  no trip"));
    }

    #[test]
    fn quiet_shows_only_failures_and_totals() {
        let text = render(
            TerminalReporter::new(Vec::new()).with_quiet(true),
            vec![testdata::passing(), testdata::failing()],
        );
        assert!(!text.contains("sag-70pct-10-cycles"));
        assert!(!text.contains("running"));
        assert!(text.contains("✗ thd-over-limit"));
        assert!(text.ends_with("2 scenarios, 5 expectations: 3 passed, 2 failed\n"));
    }

    #[test]
    fn colour_only_when_asked() {
        let text = render(
            TerminalReporter::new(Vec::new()).with_color(true),
            vec![testdata::passing()],
        );
        assert!(text.contains("\x1b[32m✓\x1b[0m"));
        assert!(text.contains("\x1b[32mPASS\x1b[0m"));
        assert!(text.contains("\x1b[32m1 scenario, 2 expectations: 2 passed, 0 failed\x1b[0m"));
    }

    #[test]
    fn wall_time_and_seed_override_are_shown() {
        let mut r = TerminalReporter::new(Vec::new());
        let o = testdata::passing();
        r.on_event(&RunEvent::ScenarioFinished {
            outcome: &o,
            wall: Some(std::time::Duration::from_millis(1250)),
        })
        .unwrap();
        let summary = RunSummary::new(vec![o.clone()], Some(9));
        r.on_event(&RunEvent::RunFinished { summary: &summary })
            .unwrap();
        let text = String::from_utf8(r.into_inner()).unwrap();
        assert!(
            text.lines()
                .next()
                .unwrap()
                .ends_with("40 s grid time  (1.25 s)"),
            "{text}"
        );
        assert!(text.contains("seed 9 used for every scenario (--seed)"));
    }
}

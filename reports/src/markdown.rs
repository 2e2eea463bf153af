//! The Markdown summary (`summary.md`), short enough for a CI job summary or a pull-request
//! comment: a verdict title with the counts, one table row per scenario, and only the failed
//! scenarios expanded (their failed expectations, the failure details and the command that
//! reproduces each). A run in which everything passes is the title, the table and one line.
//!
//! Deterministic: no wall-clock data, so the same outcomes give the same bytes. Text from
//! outcomes is escaped (`|`, newlines, Markdown punctuation and HTML), so a label or a file
//! name can never break the table or inject markup.

use std::io::Write;

use sim_core::outcome::ScenarioOutcome;

use crate::{format_duration, ReportError, Reporter, RunEvent, RunSummary};

/// The mark of a passed scenario.
pub const PASSED_MARK: &str = "✅";
/// The mark of a failed scenario.
pub const FAILED_MARK: &str = "❌";

/// Writes the whole summary when the run finishes.
#[derive(Debug)]
pub struct MarkdownReporter<W: Write> {
    out: W,
}

impl<W: Write> MarkdownReporter<W> {
    pub fn new(out: W) -> Self {
        MarkdownReporter { out }
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

impl<W: Write> Reporter for MarkdownReporter<W> {
    fn on_event(&mut self, event: &RunEvent<'_>) -> Result<(), ReportError> {
        if let RunEvent::RunFinished { summary } = event {
            self.out.write_all(summary_markdown(summary).as_bytes())?;
            self.out.flush()?;
        }
        Ok(())
    }
}

/// The Markdown summary of a run (ends with a newline).
pub fn summary_markdown(summary: &RunSummary) -> String {
    let c = summary.counts();
    let mut md = String::new();
    let line = |md: &mut String, text: &str| {
        md.push_str(text);
        md.push('\n');
    };

    let title = if summary.passed() {
        format!(
            "## {PASSED_MARK} gridloop: passed — {}, {}: {} passed, {} failed",
            plural(c.scenarios, "scenario"),
            plural(c.expectations, "expectation"),
            c.expectations_passed,
            c.expectations_failed
        )
    } else {
        format!(
            "## {FAILED_MARK} gridloop: failed — {} of {} failed, {}: {} passed, {} failed",
            c.scenarios_failed,
            plural(c.scenarios, "scenario"),
            plural(c.expectations, "expectation"),
            c.expectations_passed,
            c.expectations_failed
        )
    };
    line(&mut md, &title);
    line(&mut md, "");

    if !summary.outcomes.is_empty() {
        line(&mut md, "|  | Scenario | Expectations | Grid time | Seed |");
        line(&mut md, "|:-:|---|--:|--:|--:|");
        for o in &summary.outcomes {
            let total = o.expectations.len();
            let passed = total - o.failed_count();
            line(
                &mut md,
                &format!(
                    "| {} | {} | {passed}/{total} | {} | {} |",
                    mark(o),
                    cell(&o.name),
                    format_duration(o.duration),
                    o.seed
                ),
            );
        }
        line(&mut md, "");
    }
    if let Some(seed) = summary.seed_override {
        line(
            &mut md,
            &format!("Seed {seed} replaced every scenario's own seed (`--seed`)."),
        );
        line(&mut md, "");
    }

    for o in summary.failed() {
        failed_scenario(&mut md, o);
    }

    line(
        &mut md,
        &format!("Reproduce the run: {}", code_span(&run_command(summary))),
    );
    md
}

/// The command that repeats the run: the producer's command line when it gave one, else
/// `gridloop run <files…>` (each file once, in run order) with `--seed N` when a seed override
/// was used.
pub fn run_command(summary: &RunSummary) -> String {
    if let Some(command) = &summary.command {
        return command.clone();
    }
    let mut files: Vec<String> = Vec::new();
    for o in &summary.outcomes {
        let file = shell_quote(&o.file);
        if !files.contains(&file) {
            files.push(file);
        }
    }
    let dashed = summary.outcomes.iter().any(|o| o.file.starts_with('-'));
    let seed = summary
        .seed_override
        .map(|s| format!("--seed {s}"))
        .unwrap_or_default();
    run_words(&files, &seed, dashed)
}

/// The command that repeats one scenario exactly: its file with the seed it ran with.
pub fn scenario_command(o: &ScenarioOutcome) -> String {
    run_words(
        &[shell_quote(&o.file)],
        &format!("--seed {}", o.seed),
        o.file.starts_with('-'),
    )
}

/// `gridloop run FILES… FLAGS`; when a file starts with `-` (it would be read as a flag):
/// `gridloop run FLAGS -- FILES…`.
fn run_words(files: &[String], flags: &str, dashed: bool) -> String {
    let mut words = vec!["gridloop", "run"];
    let files = files.iter().map(String::as_str);
    if dashed {
        words.extend(Some(flags).filter(|f| !f.is_empty()));
        words.push("--");
        words.extend(files);
    } else {
        words.extend(files);
        words.extend(Some(flags).filter(|f| !f.is_empty()));
    }
    words.join(" ")
}

fn failed_scenario(md: &mut String, o: &ScenarioOutcome) {
    let mut push = |text: &str| {
        md.push_str(text);
        md.push('\n');
    };
    push(&format!("### {FAILED_MARK} {}", inline(&o.name)));
    push("");
    push(&format!(
        "{} · seed {} · {} grid time · {} of {} failed",
        code_span(&o.file),
        o.seed,
        format_duration(o.duration),
        o.failed_count(),
        plural(o.expectations.len(), "expectation")
    ));
    push("");
    push("| Failed expectation | Expected | Measured |");
    push("|---|---|---|");
    let failed: Vec<_> = o.expectations.iter().filter(|e| !e.passed).collect();
    for e in &failed {
        push(&format!(
            "| {} | {} | {} |",
            cell(&e.label),
            cell(&e.expected),
            cell(&e.measured)
        ));
    }
    push("");
    let with_detail: Vec<_> = failed
        .iter()
        .filter_map(|e| e.detail.as_deref().map(|d| (&e.label, d)))
        .collect();
    if !with_detail.is_empty() {
        push("<details><summary>Details</summary>");
        push("");
        for (label, detail) in with_detail {
            push(&format!("{}:", inline(label)));
            push("");
            let fence = fence_for(detail);
            push(&format!("{fence}text"));
            for d in detail.lines() {
                push(d.trim_end());
            }
            push(&fence);
            push("");
        }
        push("</details>");
        push("");
    }
    push(&format!(
        "Reproduce this scenario: {}",
        code_span(&scenario_command(o))
    ));
    push("");
}

fn mark(o: &ScenarioOutcome) -> &'static str {
    if o.passed() {
        PASSED_MARK
    } else {
        FAILED_MARK
    }
}

fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// Text for a table cell: [`inline`], with every line break as `<br>`.
pub fn cell(text: &str) -> String {
    let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
    lines
        .iter()
        .map(|l| inline(l))
        .collect::<Vec<_>>()
        .join("<br>")
}

/// Text as literal inline Markdown: ASCII punctuation that Markdown or GitHub tables give a
/// meaning (`|`, `*`, `_`, `` ` ``, `[`, `]`, `<`, `>`, `&`, `~`, `\`, `#`, `$`) is
/// backslash-escaped and line breaks become spaces. GitHub's own features are kept off too:
/// a zero-width space (U+200B) follows every `@` (mentions) and `#` (issue references) and
/// separates a `:` from a letter after it (`:emoji:` shortcodes); `\$` keeps `$…$` from
/// becoming math.
pub fn inline(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(ch) = chars.next() {
        match ch {
            '\\' | '|' | '*' | '_' | '`' | '[' | ']' | '<' | '>' | '&' | '~' | '$' => {
                out.push('\\');
                out.push(ch);
            }
            '#' => out.push_str("\\#\u{200B}"),
            '@' => out.push_str("@\u{200B}"),
            ':' if chars.peek().is_some_and(|c| c.is_alphabetic()) => out.push_str(":\u{200B}"),
            '\r' => {}
            '\n' => out.push(' '),
            _ => out.push(ch),
        }
    }
    out
}

/// `text` as one Markdown code span whose delimiter no backtick run inside can close.
pub fn code_span(text: &str) -> String {
    let text = text.replace(['\r', '\n'], " ");
    let ticks = "`".repeat(longest_run(&text, '`') + 1);
    if text.starts_with('`') || text.ends_with('`') {
        format!("{ticks} {text} {ticks}")
    } else {
        format!("{ticks}{text}{ticks}")
    }
}

/// A code fence longer than any backtick run in `text` (at least three backticks).
fn fence_for(text: &str) -> String {
    "`".repeat((longest_run(text, '`') + 1).max(3))
}

fn longest_run(text: &str, ch: char) -> usize {
    let (mut best, mut run) = (0, 0);
    for c in text.chars() {
        if c == ch {
            run += 1;
            best = best.max(run);
        } else {
            run = 0;
        }
    }
    best
}

/// `word` quoted for a POSIX shell: unchanged when it holds only characters no shell
/// interprets (and does not start with `=`, which zsh expands), else in single quotes (`'`
/// written as `'\''`).
pub fn shell_quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./:=,+@%".contains(c);
    if !word.is_empty() && !word.starts_with('=') && word.chars().all(plain) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::testdata;

    fn render(summary: &RunSummary) -> String {
        let mut r = MarkdownReporter::new(Vec::new());
        r.on_event(&RunEvent::RunStarted {
            scenarios: summary.outcomes.len(),
        })
        .unwrap();
        for o in &summary.outcomes {
            let wall = Some(std::time::Duration::from_millis(321));
            r.on_event(&RunEvent::ScenarioFinished { outcome: o, wall })
                .unwrap();
            assert!(r.out.is_empty(), "written only at RunFinished");
        }
        r.on_event(&RunEvent::RunFinished { summary }).unwrap();
        String::from_utf8(r.into_inner()).unwrap()
    }

    #[test]
    fn passing_run_is_title_table_and_command() {
        let md = render(&RunSummary::new(vec![testdata::passing()], None));
        assert_eq!(
            md,
            "## ✅ gridloop: passed — 1 scenario, 2 expectations: 2 passed, 0 failed\n\
             \n\
             |  | Scenario | Expectations | Grid time | Seed |\n\
             |:-:|---|--:|--:|--:|\n\
             | ✅ | sag-70pct-10-cycles | 2/2 | 40 s | 42 |\n\
             \n\
             Reproduce the run: `gridloop run scenarios/library/sag-70pct.yaml`\n"
        );
    }

    #[test]
    fn failed_scenario_is_expanded_with_its_failed_expectations_only() {
        let md = render(&RunSummary::new(
            vec![testdata::passing(), testdata::failing()],
            None,
        ));
        let lines: Vec<&str> = md.lines().collect();
        assert_eq!(
            lines[0],
            "## ❌ gridloop: failed — 1 of 2 scenarios failed, 5 expectations: 3 passed, 2 failed"
        );
        assert!(
            lines.contains(&"| ❌ | thd-over-limit | 1/3 | 2.5 s | 7 |"),
            "{md}"
        );
        assert!(lines.contains(&"### ❌ thd-over-limit"), "{md}");
        // The passing scenario is a table row and nothing more.
        assert_eq!(md.matches("sag-70pct-10-cycles").count(), 1, "{md}");
        assert!(lines.contains(&"| thd on L1 at 1.5 s | 3 % ± 0.05 | 6.403 % |"));
        assert!(lines.contains(
            &"| delivered, lost 0 | lost 0 | lost 2 (1 overflowed, 1 buffered at end) |"
        ));
        assert!(!md.contains("no trip in feeder-a"), "passed ones stay out");
        // The file name's HTML characters are inert inside a code span; the seed is exact.
        assert!(md.contains(
            "`tests/fixtures/thd <over> & limit.yaml` · seed 7 · 2.5 s grid time · 2 of 3 expectations failed"
        ));
        assert!(md.contains(
            "Reproduce this scenario: `gridloop run 'tests/fixtures/thd <over> & limit.yaml' --seed 7`"
        ));
        let detail_at = lines.iter().position(|l| l.starts_with("```text")).unwrap();
        assert_eq!(lines[detail_at - 2], "thd on L1 at 1.5 s:");
        assert_eq!(
            &lines[detail_at + 1..detail_at + 4],
            [
                "meter feeder-a/0: 6.403 %",
                "meter feeder-a/1: 6.402 %",
                "```"
            ]
        );
        assert!(md.ends_with(
            "Reproduce the run: `gridloop run scenarios/library/sag-70pct.yaml 'tests/fixtures/thd <over> & limit.yaml'`\n"
        ));
        insta::assert_snapshot!(md);
    }

    #[test]
    fn seed_override_and_command_line_are_shown() {
        let summary = RunSummary::new(vec![testdata::passing()], Some(9));
        let md = render(&summary);
        assert!(md.contains("Seed 9 replaced every scenario's own seed (`--seed`)."));
        assert!(md.ends_with(
            "Reproduce the run: `gridloop run scenarios/library/sag-70pct.yaml --seed 9`\n"
        ));
        let twice = RunSummary::new(vec![testdata::passing(), testdata::passing()], None);
        assert_eq!(
            run_command(&twice),
            "gridloop run scenarios/library/sag-70pct.yaml"
        );
        let md = render(&summary.with_command("gridloop run scenarios/library --seed 9"));
        assert!(md.ends_with("Reproduce the run: `gridloop run scenarios/library --seed 9`\n"));
    }

    #[test]
    fn cells_cannot_break_the_table() {
        let mut o = testdata::failing();
        o.name = "a|b".into();
        o.expectations[0].label = "x | y\nz".into();
        o.expectations[0].measured = "<b>bold</b> *a* _b_ `c`".into();
        let md = render(&RunSummary::new(vec![o], None));
        assert!(md.contains("| ❌ | a\\|b | 1/3 |"), "{md}");
        assert!(
            md.contains(r"| x \| y<br>z | 3 % ± 0.05 | \<b\>bold\</b\> \*a\* \_b\_ \`c\` |"),
            "{md}"
        );
        // Every table row still has exactly its columns' unescaped pipes.
        for row in md.lines().filter(|l| l.starts_with('|')) {
            let pipes = row.len() - row.replace('|', "").len() - row.matches("\\|").count();
            assert!(pipes == 6 || pipes == 4, "{pipes}: {row}");
        }
        assert_eq!(cell("a\r\nb\n"), "a<br>b");
        assert_eq!(inline("1\n2"), "1 2");
    }

    #[test]
    fn code_spans_and_fences_outlast_backticks() {
        assert_eq!(code_span("a"), "`a`");
        assert_eq!(code_span("a`b"), "``a`b``");
        assert_eq!(code_span("`a"), "`` `a ``");
        assert_eq!(code_span("x\ny"), "`x y`");
        assert_eq!(fence_for("plain"), "```");
        assert_eq!(fence_for("has ```` four"), "`````");
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(
            shell_quote("scenarios/library/a-b_c.yaml"),
            "scenarios/library/a-b_c.yaml"
        );
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("$HOME"), "'$HOME'");
        // `=` starts a zsh expansion only at the start of a word; `^` is special in places.
        assert_eq!(shell_quote("=ls"), "'=ls'");
        assert_eq!(shell_quote("seed=3"), "seed=3");
        assert_eq!(shell_quote("a^b.yaml"), "'a^b.yaml'");
        assert_eq!(shell_quote("-odd.yaml"), "-odd.yaml");
    }

    #[test]
    fn reproduce_commands_put_files_starting_with_a_dash_after_double_dash() {
        let mut o = testdata::failing();
        o.file = "-odd.yaml".into();
        assert_eq!(scenario_command(&o), "gridloop run --seed 7 -- -odd.yaml");
        assert_eq!(
            run_command(&RunSummary::new(vec![o.clone()], None)),
            "gridloop run -- -odd.yaml"
        );
        assert_eq!(
            run_command(&RunSummary::new(
                vec![testdata::passing(), o.clone()],
                Some(3)
            )),
            "gridloop run --seed 3 -- scenarios/library/sag-70pct.yaml -odd.yaml"
        );
        let md = render(&RunSummary::new(vec![o], None));
        assert!(
            md.contains("Reproduce this scenario: `gridloop run --seed 7 -- -odd.yaml`"),
            "{md}"
        );
        assert!(
            md.ends_with("Reproduce the run: `gridloop run -- -odd.yaml`\n"),
            "{md}"
        );
    }

    #[test]
    fn mentions_references_emoji_and_math_stay_inert() {
        let zw = '\u{200B}';
        let mut o = testdata::failing();
        o.name = "ping @octocat on #123 :tada: for $5 and $x$".into();
        o.expectations[0].label = "@team:rocket:".into();
        let md = render(&RunSummary::new(vec![o], None));
        let name = format!("ping @{zw}octocat on \\#{zw}123 :{zw}tada: for \\$5 and \\$x\\$");
        assert!(md.contains(&format!("| ❌ | {name} | 1/3 |")), "{md}");
        assert!(md.contains(&format!("### ❌ {name}\n")), "{md}");
        assert!(md.contains(&format!("| @{zw}team:{zw}rocket: |")), "{md}");
        assert!(md.contains(&format!("@{zw}team:{zw}rocket::\n")), "{md}");
        for raw in ["@octocat", "@team", "#123", ":tada", ":rocket"] {
            assert!(!md.contains(raw), "{raw}: {md}");
        }
        assert_eq!(
            md.matches('$').count(),
            6,
            "3 in the table row, 3 in the heading"
        );
        assert_eq!(md.matches("\\$").count(), 6, "every `$` is escaped: {md}");
        // Only a letter after `:` is separated: times and URLs read as before.
        assert_eq!(inline("1:30 a::b"), format!("1:30 a::{zw}b"));
    }

    #[test]
    fn all_passing_run_of_25_stays_short() {
        let outcomes: Vec<_> = (0..25)
            .map(|i| {
                let mut o = testdata::passing();
                o.name = format!("scenario-{i}");
                o
            })
            .collect();
        let summary = RunSummary::new(outcomes, Some(3))
            .with_command("gridloop run scenarios/library --seed 3 --report out");
        let md = render(&summary);
        assert!(
            md.lines().count() <= 35,
            "{} lines:\n{md}",
            md.lines().count()
        );
        assert!(!md.contains("###"), "nothing expanded");
    }

    #[test]
    fn empty_run_and_identical_bytes() {
        let md = render(&RunSummary::new(vec![], None));
        assert_eq!(
            md,
            "## ✅ gridloop: passed — 0 scenarios, 0 expectations: 0 passed, 0 failed\n\
             \n\
             Reproduce the run: `gridloop run`\n"
        );
        let s = RunSummary::new(vec![testdata::passing(), testdata::failing()], Some(1));
        assert_eq!(render(&s), render(&s.clone()));
    }
}

//! The HTML report (`index.html`): one self-contained page a QA lead opens — inline CSS, plots
//! as inline SVG (each linked to its `.svg` and `.png` file in `plots/`), no scripts, nothing fetched from the network. A verdict title, a table of
//! scenarios, a table of every expectation with expected against measured and its verdict
//! (each row links to its scenario's section), the command that reproduces the run, and per
//! scenario: file, seed, the command that reproduces it, its expectations with details, run
//! counters, its plots and its timeline.
//!
//! Deterministic (no wall-clock data). Every text from outcomes is HTML-escaped.

use std::io::Write;

use sim_core::outcome::{ScenarioOutcome, EVENT_WAVEFORM_NOISE_DRAWS_MAX};

use crate::markdown::{run_command, scenario_command};
use crate::plots::{file_part, scenario_plots, scenario_plots_with_png, PlotFile};
use crate::{format_duration, trim_decimals, ReportError, Reporter, RunEvent, RunSummary};

/// Folder of the plot files, relative to `index.html`.
pub const PLOTS_DIR: &str = "plots";

const STYLE: &str = "\
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0 auto;\
max-width:1100px;padding:1.5rem;color:#222;line-height:1.45}\
h1{font-size:1.5rem}h2{font-size:1.25rem;margin-top:2.5rem;border-bottom:1px solid #ddd}\
h3{font-size:1.05rem}\
table{border-collapse:collapse;margin:.75rem 0;width:100%}\
th,td{border:1px solid #ddd;padding:.3rem .5rem;text-align:left;vertical-align:top}\
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}\
.pass{color:#11702a;font-weight:600}.fail{color:#b00020;font-weight:600}\
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.9em;\
background:#f6f8fa;border-radius:4px}code{padding:.1rem .3rem}pre{padding:.5rem;overflow-x:auto}\
figure{margin:1rem 0}figure svg{max-width:100%;height:auto;border:1px solid #eee}\
figcaption{font-size:.9rem;color:#555}.meta{color:#555}";

/// Writes `index.html` when the run finishes.
#[derive(Debug)]
pub struct HtmlReporter<W: Write> {
    out: W,
}

impl<W: Write> HtmlReporter<W> {
    pub fn new(out: W) -> Self {
        HtmlReporter { out }
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

impl<W: Write> Reporter for HtmlReporter<W> {
    fn on_event(&mut self, event: &RunEvent<'_>) -> Result<(), ReportError> {
        if let RunEvent::RunFinished { summary } = event {
            let plots = run_plots(summary)?;
            self.out.write_all(index_html(summary, &plots).as_bytes())?;
            self.out.flush()?;
        }
        Ok(())
    }
}

/// Every scenario's plots (in outcome order), with file names unique across the run: a name
/// taken by an earlier scenario gets `-2`, `-3`, … before `.svg`. SVG only.
pub fn run_plots(summary: &RunSummary) -> Result<Vec<Vec<PlotFile>>, ReportError> {
    unique_plots(summary, scenario_plots)
}

/// [`run_plots`] with every plot also rendered as a PNG ([`PlotFile::png`], saved as
/// [`PlotFile::png_name`]).
pub fn run_plots_with_png(summary: &RunSummary) -> Result<Vec<Vec<PlotFile>>, ReportError> {
    unique_plots(summary, scenario_plots_with_png)
}

fn unique_plots(
    summary: &RunSummary,
    render: fn(&ScenarioOutcome) -> Result<Vec<PlotFile>, ReportError>,
) -> Result<Vec<Vec<PlotFile>>, ReportError> {
    let mut taken: Vec<String> = Vec::new();
    let mut all = Vec::with_capacity(summary.outcomes.len());
    for o in &summary.outcomes {
        let mut files = render(o)?;
        for f in &mut files {
            let stem = f.name.trim_end_matches(".svg").to_owned();
            let mut k = 1;
            while taken.contains(&f.name) {
                k += 1;
                f.name = format!("{stem}-{k}.svg");
            }
            taken.push(f.name.clone());
        }
        all.push(files);
    }
    Ok(all)
}

/// `text` with `&`, `<`, `>`, `"` and `'` as character references.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// The `id` of scenario `index`'s section: `s<index+1>-<name>` (unique even when two
/// scenarios share a name).
pub fn section_id(index: usize, o: &ScenarioOutcome) -> String {
    format!("s{}-{}", index + 1, file_part(&o.name))
}

fn verdict(passed: bool) -> &'static str {
    if passed {
        "<span class=\"pass\">passed</span>"
    } else {
        "<span class=\"fail\">failed</span>"
    }
}

/// The whole page. `plots[i]` are the plots of `summary.outcomes[i]` (see [`run_plots`]);
/// missing entries mean no plots.
pub fn index_html(summary: &RunSummary, plots: &[Vec<PlotFile>]) -> String {
    let c = summary.counts();
    let mut h = String::new();
    let counts = format!(
        "{} of {} scenarios passed, {} of {} expectations passed",
        c.scenarios_passed, c.scenarios, c.expectations_passed, c.expectations
    );
    let word = if summary.passed() { "passed" } else { "failed" };
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    h.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    h.push_str(&format!("<title>gridloop: {word} — {counts}</title>\n"));
    h.push_str(&format!("<style>{STYLE}</style>\n</head>\n<body>\n"));
    h.push_str(&format!(
        "<h1>gridloop: {} — {counts}</h1>\n",
        verdict(summary.passed())
    ));
    h.push_str(&format!(
        "<p>Reproduce the run: <code>{}</code></p>\n",
        escape(&run_command(summary))
    ));
    if let Some(seed) = summary.seed_override {
        h.push_str(&format!(
            "<p>Seed {seed} replaced every scenario's own seed (<code>--seed</code>).</p>\n"
        ));
    }

    h.push_str("<h2 id=\"scenarios\">Scenarios</h2>\n<table>\n<thead><tr><th>Verdict</th><th>Scenario</th><th>Expectations passed</th><th>Grid time</th><th>Meters</th><th>Seed</th></tr></thead>\n<tbody>\n");
    for (i, o) in summary.outcomes.iter().enumerate() {
        let total = o.expectations.len();
        h.push_str(&format!(
            "<tr><td>{}</td><td><a href=\"#{}\">{}</a></td><td class=\"num\">{}/{total}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>\n",
            verdict(o.passed()),
            section_id(i, o),
            escape(&o.name),
            total - o.failed_count(),
            escape(&format_duration(o.duration)),
            o.stats.meters,
            o.seed
        ));
    }
    h.push_str("</tbody>\n</table>\n");

    h.push_str("<h2 id=\"expectations\">Expectations</h2>\n<table>\n<thead><tr><th>Verdict</th><th>Scenario</th><th>Expectation</th><th>Expected</th><th>Measured</th></tr></thead>\n<tbody>\n");
    for (i, o) in summary.outcomes.iter().enumerate() {
        for e in &o.expectations {
            h.push_str(&format!(
                "<tr><td>{}</td><td><a href=\"#{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                verdict(e.passed),
                section_id(i, o),
                escape(&o.name),
                escape(&e.label),
                escape(&e.expected),
                escape(&e.measured)
            ));
        }
    }
    h.push_str("</tbody>\n</table>\n");

    for (i, o) in summary.outcomes.iter().enumerate() {
        scenario_section(&mut h, i, o, plots.get(i).map_or(&[][..], Vec::as_slice));
    }
    h.push_str("</body>\n</html>\n");
    h
}

fn scenario_section(h: &mut String, index: usize, o: &ScenarioOutcome, plots: &[PlotFile]) {
    h.push_str(&format!(
        "<section id=\"{}\">\n<h2>{} {}</h2>\n",
        section_id(index, o),
        verdict(o.passed()),
        escape(&o.name)
    ));
    if !o.description.is_empty() {
        h.push_str(&format!("<p>{}</p>\n", escape(&o.description)));
    }
    let tags = if o.tags.is_empty() {
        String::new()
    } else {
        format!(" · tags {}", escape(&o.tags.join(", ")))
    };
    h.push_str(&format!(
        "<p class=\"meta\">File <code>{}</code> · seed {} · mode {} · {} grid time{tags}</p>\n",
        escape(&o.file),
        o.seed,
        escape(o.mode),
        escape(&format_duration(o.duration))
    ));
    h.push_str(&format!(
        "<p>Reproduce this scenario: <code>{}</code></p>\n",
        escape(&scenario_command(o))
    ));

    h.push_str("<table>\n<thead><tr><th>Verdict</th><th>Expectation</th><th>Expected</th><th>Measured</th></tr></thead>\n<tbody>\n");
    for e in &o.expectations {
        let detail = e
            .detail
            .as_deref()
            .map(|d| {
                format!(
                    "<details><summary>details</summary><pre>{}</pre></details>",
                    escape(d)
                )
            })
            .unwrap_or_default();
        h.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}{detail}</td></tr>\n",
            verdict(e.passed),
            escape(&e.label),
            escape(&e.expected),
            escape(&e.measured)
        ));
    }
    h.push_str("</tbody>\n</table>\n");

    let s = &o.stats;
    let lat = &s.alarm_latency;
    h.push_str(&format!(
        "<p class=\"meta\">{} meters · {} trips · {} clears · {} messages produced, {} delivered, {} duplicates, {} overflowed, {} buffered at the end, {} unexplained · {} alarms",
        s.meters, s.trips, s.clears, s.produced, s.delivered, s.duplicates, s.overflowed,
        s.buffered_at_end, s.unexplained_loss, s.alarms
    ));
    if lat.count > 0 {
        h.push_str(&format!(
            " · alarm latency p50 {}, p99 {}, max {}",
            escape(&format_duration(lat.p50)),
            escape(&format_duration(lat.p99)),
            escape(&format_duration(lat.max))
        ));
    }
    h.push_str("</p>\n");

    if !plots.is_empty() {
        h.push_str("<h3>Plots</h3>\n");
    }
    for p in plots {
        h.push_str("<figure>\n");
        h.push_str(&p.svg);
        h.push_str(&format!(
            "<figcaption>{} — {} (<a href=\"{PLOTS_DIR}/{}\">{}</a>, \
             <a href=\"{PLOTS_DIR}/{}\">PNG</a>)</figcaption>\n</figure>\n",
            escape(&p.group),
            escape(p.title),
            escape(&p.name),
            escape(&p.name),
            escape(&p.png_name())
        ));
    }
    for g in &o.plots.groups {
        for (onset, draws) in &g.event_waveforms_omitted {
            h.push_str(&format!(
                "<p class=\"meta\">{}: no event waveform for the onset at {} s: reaching it \
                 would replay {draws} noise draws, over the cap of {EVENT_WAVEFORM_NOISE_DRAWS_MAX}.</p>\n",
                escape(&g.name),
                trim_decimals(*onset, 4)
            ));
        }
    }

    if !o.timeline.is_empty() {
        h.push_str("<h3>Timeline</h3>\n<table>\n<thead><tr><th>Grid time</th><th>What</th></tr></thead>\n<tbody>\n");
        for t in &o.timeline {
            h.push_str(&format!(
                "<tr><td class=\"num\">{}</td><td>{}</td></tr>\n",
                escape(&format!("{:.4} s", t.at)),
                escape(&t.what)
            ));
        }
        h.push_str("</tbody>\n</table>\n");
    }
    h.push_str("</section>\n");
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::testdata;

    fn render(summary: &RunSummary) -> String {
        let mut r = HtmlReporter::new(Vec::new());
        r.on_event(&RunEvent::RunStarted {
            scenarios: summary.outcomes.len(),
        })
        .unwrap();
        for o in &summary.outcomes {
            r.on_event(&RunEvent::ScenarioFinished {
                outcome: o,
                wall: None,
            })
            .unwrap();
            assert!(r.out.is_empty(), "written only at RunFinished");
        }
        r.on_event(&RunEvent::RunFinished { summary }).unwrap();
        String::from_utf8(r.into_inner()).unwrap()
    }

    #[test]
    fn page_has_tables_links_plots_and_reproduce_commands() {
        let summary = RunSummary::new(vec![testdata::passing(), testdata::failing()], None)
            .with_command("gridloop run scenarios/library --report out");
        let html = render(&summary);
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.ends_with("</html>\n"));
        assert!(html.contains(
            "<title>gridloop: failed — 1 of 2 scenarios passed, 3 of 5 expectations passed</title>"
        ));
        // Scenario table rows link to their sections, which exist.
        for id in ["s1-sag-70pct-10-cycles", "s2-thd-over-limit"] {
            assert!(html.contains(&format!("href=\"#{id}\"")), "{id}");
            assert!(html.contains(&format!("<section id=\"{id}\">")), "{id}");
        }
        // Expected against measured, with the verdict, for every expectation.
        assert!(html.contains(
            "<tr><td><span class=\"fail\">failed</span></td><td><a href=\"#s2-thd-over-limit\">thd-over-limit</a></td><td>thd on L1 at 1.5 s</td><td>3 % ± 0.05</td><td>6.403 %</td></tr>"
        ));
        assert_eq!(
            html.matches("<span class=\"pass\">passed</span>").count(),
            // Scenario table, expectation table, section heading, section table.
            1 + 3 + 1 + 3
        );
        // Seed and commands.
        assert!(html.contains("<code>gridloop run scenarios/library --report out</code>"));
        assert!(
            html.contains("<code>gridloop run scenarios/library/sag-70pct.yaml --seed 42</code>")
        );
        assert!(html.contains("seed 7 · mode sim"));
        // Plots inline, with links to their files; none for a scenario without plot data.
        assert_eq!(html.matches("<svg ").count(), 4);
        assert!(html.contains("href=\"plots/sag-70pct-10-cycles-feeder-a-rms.svg\""));
        assert!(html.contains("href=\"plots/sag-70pct-10-cycles-feeder-a-latency-cdf.svg\""));
        assert!(html.contains("href=\"plots/sag-70pct-10-cycles-feeder-a-thd.svg\""));
        assert!(html.contains("href=\"plots/sag-70pct-10-cycles-feeder-a-event-1.svg\""));
        // Self-contained: no scripts, no external resources.
        for banned in ["<script", "<link", "src=", "http://", "https://"] {
            let outside_svg_ns = html.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
            assert!(!outside_svg_ns.contains(banned), "{banned}");
        }
        // Deterministic.
        assert_eq!(html, render(&summary));
    }

    #[test]
    fn text_from_outcomes_is_escaped() {
        let failing = testdata::failing();
        let html = render(&RunSummary::new(vec![failing], None));
        assert!(html.contains("tests/fixtures/thd &lt;over&gt; &amp; limit.yaml"));
        assert!(html.contains("Harmonics that &quot;cannot&quot; give 3 % THD"));
        assert!(!html.contains("<over>"));
        assert!(
            html.contains("&#39;tests/fixtures/thd &lt;over&gt; &amp; limit.yaml&#39; --seed 7")
        );
        assert!(html.contains("<pre>meter feeder-a/0: 6.403 %\nmeter feeder-a/1: 6.402 %</pre>"));
        assert_eq!(
            escape("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
    }

    #[test]
    fn plot_names_are_unique_across_the_run() {
        let summary = RunSummary::new(vec![testdata::passing(), testdata::passing()], None);
        let plots = run_plots(&summary).unwrap();
        let names: Vec<&str> = plots.iter().flatten().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "sag-70pct-10-cycles-feeder-a-rms.svg",
                "sag-70pct-10-cycles-feeder-a-latency-cdf.svg",
                "sag-70pct-10-cycles-feeder-a-thd.svg",
                "sag-70pct-10-cycles-feeder-a-event-1.svg",
                "sag-70pct-10-cycles-feeder-a-rms-2.svg",
                "sag-70pct-10-cycles-feeder-a-latency-cdf-2.svg",
                "sag-70pct-10-cycles-feeder-a-thd-2.svg",
                "sag-70pct-10-cycles-feeder-a-event-1-2.svg",
            ]
        );
        let html = index_html(&summary, &plots);
        assert!(html.contains("<section id=\"s2-sag-70pct-10-cycles\">"));
        assert!(html.contains("href=\"plots/sag-70pct-10-cycles-feeder-a-rms-2.svg\""));
    }

    #[test]
    fn plots_link_their_png_and_omitted_waveforms_are_named() {
        let mut o = testdata::passing();
        o.plots.groups[0].event_waveforms_omitted = vec![(95.0042, 301_234_567)];
        let summary = RunSummary::new(vec![o], None);
        let plots = run_plots(&summary).unwrap();
        let html = index_html(&summary, &plots);
        assert!(html.contains("<a href=\"plots/sag-70pct-10-cycles-feeder-a-rms.png\">PNG</a>"));
        assert!(html.contains(
            "feeder-a: no event waveform for the onset at 95.0042 s: reaching it would replay \
             301234567 noise draws, over the cap of 200000000."
        ));
    }
}

//! End-to-end tests of `gridloop run --report DIR`: the directory and its three files, what
//! `summary.md` says, and exit 3 when the directory cannot be made.

use super::exit;
use super::{assert_code, gridloop, path_arg, scratch};

#[test]
fn report_dir_holds_summary_results_and_junit() {
    let scratch = scratch("pass");
    // Parents are created too.
    let dir = scratch.join("nested/report");
    let json = scratch.join("results.json");
    let junit = scratch.join("junit.xml");
    let argv = [
        "run",
        "tests/fixtures/pass",
        "--quiet",
        "--report",
        path_arg(&dir),
        "--json",
        path_arg(&json),
        "--junit",
        path_arg(&junit),
    ];
    let out = gridloop(&argv);
    assert_code(&out, exit::SUCCESS);

    let md = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    let lines: Vec<&str> = md.lines().collect();
    assert_eq!(
        lines[0],
        "## ✅ gridloop: passed — 2 scenarios, 4 expectations: 4 passed, 0 failed"
    );
    assert!(
        lines.contains(&"| ✅ | fixture-sag-trips | 3/3 | 3 s | 42 |"),
        "{md}"
    );
    assert!(
        lines.contains(&"| ✅ | fixture-steady | 1/1 | 2 s | 1 |"),
        "{md}"
    );
    assert!(!md.contains("###"), "a passing run expands nothing: {md}");
    // The command that made the report is the one to repeat it.
    assert_eq!(
        *lines.last().unwrap(),
        format!(
            "Reproduce the run: `{}`",
            gridloop::report_dir::quoted_command(argv.map(String::from))
        )
    );
    assert!(
        lines
            .last()
            .unwrap()
            .starts_with("Reproduce the run: `gridloop run tests/fixtures/pass --quiet --report "),
        "{md}"
    );

    // results.json and junit.xml are exactly what --json and --junit write.
    let in_dir = std::fs::read(dir.join("results.json")).unwrap();
    assert_eq!(in_dir, std::fs::read(&json).unwrap());
    let doc: serde_json::Value = serde_json::from_slice(&in_dir).unwrap();
    assert_eq!(doc["format"], "gridloop-results");
    assert_eq!(doc["summary"]["passed"], true);
    let xml = std::fs::read_to_string(dir.join("junit.xml")).unwrap();
    assert_eq!(xml, std::fs::read_to_string(&junit).unwrap());
    let report = quick_junit::Report::deserialize_from_str(&xml).unwrap();
    let suites: Vec<&str> = report.test_suites.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(suites, ["fixture-sag-trips", "fixture-steady"]);

    // index.html: both scenarios linked to their sections, plots inline, the reproduce command.
    let html = std::fs::read_to_string(dir.join("index.html")).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"), "{html}");
    for id in ["s1-fixture-sag-trips", "s2-fixture-steady"] {
        assert!(html.contains(&format!("<a href=\"#{id}\">")), "{id}");
        assert!(html.contains(&format!("<section id=\"{id}\">")), "{id}");
    }
    assert!(html.contains("<code>gridloop run tests/fixtures/pass --quiet --report "));
    assert!(html.contains("seed 42"));
    // Plot files: an RMS trend per scenario (one group each), and for the one that tripped
    // (two meters) a latency CDF and trips over time; each is inline in index.html too.
    let plots = dir.join("plots");
    let mut names: Vec<String> = std::fs::read_dir(&plots)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let stems = [
        "fixture-sag-trips-feeder-a-event-1",
        "fixture-sag-trips-feeder-a-latency-cdf",
        "fixture-sag-trips-feeder-a-rms",
        "fixture-sag-trips-feeder-a-thd",
        "fixture-sag-trips-fleet-trips",
        "fixture-steady-feeder-b-rms",
    ];
    let mut want: Vec<String> = stems
        .iter()
        .flat_map(|s| [format!("{s}.png"), format!("{s}.svg")])
        .collect();
    want.sort();
    assert_eq!(names, want, "an SVG and a PNG of every plot");
    for stem in stems {
        let png = std::fs::read(plots.join(format!("{stem}.png"))).unwrap();
        assert_eq!(png_size(&png), Some(reports::plots::PNG_SIZE), "{stem}.png");
    }
    let rms = std::fs::read_to_string(plots.join("fixture-sag-trips-feeder-a-rms.svg")).unwrap();
    assert!(rms.starts_with("<svg "), "{rms}");
    assert!(rms.contains("fixture-sag-trips — feeder-a: RMS trend"));
    assert!(rms.contains("upper limit 252 V") && rms.contains("lower limit 210 V"));
    assert!(rms.contains("10/12-cycle RMS (V)"));
    assert!(html.contains(&rms), "the plot file is the inline SVG");
    assert_eq!(html.matches("<svg ").count(), 6);
}

#[test]
fn event_waveform_of_a_sag_at_90_s_shows_the_dip_at_the_onset() {
    let dir = scratch("late-sag");
    let scenario = dir.join("late-sag.yaml");
    std::fs::write(
        &scenario,
        "schema: 1
name: late-sag
description: A sag to 0.5 pu on L1 at 90 s, with noise from 30 s.
seed: 7
duration: 100s
grid: { nominal: 240.0, frequency: 60.0, phases: 3, sample_rate: 7680 }
meters:
  - group: feeder
    count: 1
    substation: sub-01
    fidelity: rms
    thresholds: { upper: 252.0, lower: 210.0, hysteresis: 2.0 }
events:
  - { at: 30s, noise: { rms: 0.002, duration: 70s } }
  - { at: 90s, sag: { phases: [L1], residual: 0.5, duration: 12cycles, point_on_wave: 90 } }
expect:
  - no_flapping: { max_trips_per_meter: 1 }
",
    )
    .unwrap();
    let report = dir.join("out");
    let out = gridloop(&[
        "run",
        path_arg(&scenario),
        "--quiet",
        "--report",
        path_arg(&report),
    ]);
    assert_code(&out, exit::SUCCESS);
    let plots = report.join("plots");
    assert!(plots.join("late-sag-feeder-event-1.png").exists());
    let svg = std::fs::read_to_string(plots.join("late-sag-feeder-event-1.svg")).unwrap();
    assert!(svg.contains("waveform at the onset at 90.0042 s"), "{svg}");
    assert!(svg.contains("onset at 90.0042 s"));
    // The onset line: the vertical red polyline. L1 (blue) reaches the nominal peak before it
    // and only about half of it from one cycle after it: its highest point (smallest y) after
    // the onset is far lower on the page.
    let polylines = |stroke: &str| -> Vec<Vec<(f64, f64)>> {
        svg.match_indices("<polyline ")
            .map(|(i, _)| &svg[i..i + svg[i..].find("/>").unwrap()])
            .filter(|tag| tag.contains(&format!("stroke=\"{stroke}\"")))
            .map(|tag| {
                let start = tag.find("points=\"").unwrap() + 8;
                let end = start + tag[start..].find('"').unwrap();
                tag[start..end]
                    .split_whitespace()
                    .map(|p| {
                        let (x, y) = p.split_once(',').unwrap();
                        (x.parse().unwrap(), y.parse().unwrap())
                    })
                    .collect()
            })
            .collect()
    };
    let onset = polylines("#C80000")
        .into_iter()
        .find(|l| l.len() == 2 && l[0].0 == l[1].0)
        .expect("a vertical onset line");
    let x0 = onset[0].0;
    let l1 = polylines("#1F77B4")
        .into_iter()
        .max_by_key(Vec::len)
        .expect("the L1 line");
    let top = |keep: &dyn Fn(f64) -> bool| {
        l1.iter()
            .filter(|p| keep(p.0))
            .map(|p| p.1)
            .fold(f64::INFINITY, f64::min)
    };
    let before = top(&|x| x < x0 - 2.0);
    // One cycle is 1/8 of the 8-cycle window drawn over the plot's width.
    let cycle_px = (l1.last().unwrap().0 - l1[0].0) / 8.0;
    let after = top(&|x| x > x0 + cycle_px);
    assert!(before.is_finite() && after.is_finite());
    assert!(
        after - before > 40.0,
        "peak y before {before}, after {after}"
    );
}

#[test]
fn report_has_event_waveform_and_thd_plots_for_library_sag_and_harmonics() {
    let dir = scratch("wave").join("out");
    let out = gridloop(&[
        "run",
        "../scenarios/library/sags-swells/sag-75pct-12-cycles.yaml",
        "../scenarios/library/harmonics/thd-3rd-5th.yaml",
        "--quiet",
        "--report",
        path_arg(&dir),
    ]);
    assert_code(&out, exit::SUCCESS);
    let plots = dir.join("plots");
    let html = std::fs::read_to_string(dir.join("index.html")).unwrap();
    let event =
        std::fs::read_to_string(plots.join("sag-75pct-12-cycles-feeder-a-event-1.svg")).unwrap();
    assert!(event.starts_with("<svg "), "{event}");
    for text in [
        "time relative to the onset (ms)",
        "instantaneous voltage (V)",
        "L1 voltage",
        "nominal peak ±339.4 V (√2 · 240 V)",
        "onset at 1.0042 s",
    ] {
        assert!(event.contains(text), "{text}");
    }
    assert!(html.contains(&event), "the plot file is the inline SVG");
    let thd = std::fs::read_to_string(plots.join("thd-3rd-5th-eu-feeder-thd.svg")).unwrap();
    for text in [
        "THD per 10/12-cycle window (%)",
        "time since scenario start (s)",
        "L3 THD",
    ] {
        assert!(thd.contains(text), "{text}");
    }
    assert!(html.contains(&thd));
    assert!(plots.join("thd-3rd-5th-eu-feeder-event-1.svg").exists());
}

#[test]
fn failing_run_summary_expands_the_failure_and_reproduces_with_the_seed() {
    let dir = scratch("fail").join("out");
    let out = gridloop(&[
        "run",
        "tests/fixtures/fail/impossible-trip.yaml",
        "--seed",
        "5",
        "--report",
        path_arg(&dir),
    ]);
    assert_code(&out, exit::EXPECTATION_FAILED);
    let md = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    assert!(
        md.starts_with(
            "## ❌ gridloop: failed — 1 of 1 scenario failed, 2 expectations: 1 passed, 1 failed\n"
        ),
        "{md}"
    );
    assert!(
        md.contains("| ❌ | fixture-impossible-trip | 1/2 |"),
        "{md}"
    );
    assert!(md.contains("### ❌ fixture-impossible-trip"), "{md}");
    assert!(md.contains("| Failed expectation | Expected | Measured |"));
    assert!(
        md.contains("UV\\_TRIP\\_0x01"),
        "the failed trip is listed: {md}"
    );
    assert!(md.contains("Seed 5 replaced every scenario's own seed (`--seed`)."));
    assert!(md.contains(
        "Reproduce this scenario: `gridloop run tests/fixtures/fail/impossible-trip.yaml --seed 5`"
    ));
    for name in ["results.json", "junit.xml", "index.html"] {
        assert!(dir.join(name).is_file(), "{name}");
    }
    let xml = std::fs::read_to_string(dir.join("junit.xml")).unwrap();
    assert_eq!(xml.matches("<failure").count(), 1);
}

#[test]
fn report_dir_that_cannot_be_made_exits_3_before_running() {
    let scratch = scratch("blocked");
    let file = scratch.join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    for dir in [file.clone(), file.join("sub")] {
        let out = gridloop(&["run", "tests/fixtures/pass", "--report", path_arg(&dir)]);
        assert_code(&out, exit::ENVIRONMENT);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!(
                "cannot create the report directory {}",
                dir.display()
            )),
            "{err}"
        );
        assert!(out.stdout.is_empty(), "nothing ran");
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "not a directory");
}

#[test]
fn report_is_in_run_help() {
    let out = gridloop(&["run", "--help"]);
    assert_code(&out, exit::SUCCESS);
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(help.contains("--report <DIR>"), "{help}");
    assert!(help.contains("summary.md"), "{help}");
}

#[test]
fn a_report_dir_file_named_again_by_json_or_junit_is_a_usage_error() {
    let dir = scratch("report-dir-collision");
    let results = dir.join("results.json");
    let junit = dir.join("junit.xml");
    for (flag, file) in [("--json", &results), ("--junit", &junit)] {
        let out = gridloop(&[
            "run",
            "tests/fixtures/pass",
            "--report",
            path_arg(&dir),
            flag,
            path_arg(file),
        ]);
        assert_code(&out, exit::INVALID_INPUT);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("name the same file"), "{err}");
        assert!(err.contains(flag), "{err}");
        assert!(out.stdout.is_empty(), "nothing ran");
    }
}

/// Every file in `dir` whose name marks it as a temporary (`.<name>.partial-<pid>`).
fn partials(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".partial-"))
        .collect()
}

#[test]
fn a_failed_run_leaves_existing_report_files_untouched() {
    let scratch = scratch("keep-old");
    let junit = scratch.join("junit.xml");
    let json = scratch.join("results.json");
    std::fs::write(&junit, "old junit").unwrap();
    std::fs::write(&json, "old json").unwrap();
    let blocker = scratch.join("a-file");
    std::fs::write(&blocker, "x").unwrap();
    // --report cannot be made after --junit and --json were accepted: exit 3, nothing ran,
    // and the old files were neither emptied nor replaced.
    let out = gridloop(&[
        "run",
        "tests/fixtures/pass",
        "--junit",
        path_arg(&junit),
        "--json",
        path_arg(&json),
        "--report",
        path_arg(&blocker.join("out")),
    ]);
    assert_code(&out, exit::ENVIRONMENT);
    assert!(out.stdout.is_empty(), "nothing ran");
    assert_eq!(std::fs::read_to_string(&junit).unwrap(), "old junit");
    assert_eq!(std::fs::read_to_string(&json).unwrap(), "old json");
    assert!(partials(&scratch).is_empty(), "{:?}", partials(&scratch));

    // The same when the last report path is a folder.
    let folder = scratch.join("folder");
    std::fs::create_dir(&folder).unwrap();
    let out = gridloop(&[
        "run",
        "tests/fixtures/pass",
        "--junit",
        path_arg(&junit),
        "--json",
        path_arg(&folder),
    ]);
    assert_code(&out, exit::ENVIRONMENT);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot create the JSON file"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&junit).unwrap(), "old junit");
    assert!(partials(&scratch).is_empty(), "{:?}", partials(&scratch));

    // A run that completes replaces them whole, and leaves no temporary behind.
    let out = gridloop(&[
        "run",
        "tests/fixtures/pass",
        "--quiet",
        "--junit",
        path_arg(&junit),
        "--json",
        path_arg(&json),
        "--report",
        path_arg(&scratch.join("report")),
    ]);
    assert_code(&out, exit::SUCCESS);
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert_eq!(xml.matches("<testcase ").count(), 4, "{xml}");
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(doc["summary"]["passed"], true);
    assert!(scratch.join("report/summary.md").is_file());
    assert!(partials(&scratch).is_empty(), "{:?}", partials(&scratch));
    assert!(partials(&scratch.join("report")).is_empty());
}

#[test]
fn a_report_over_a_scenario_file_is_a_usage_error() {
    let scratch = scratch("over-scenario");
    let scenario = scratch.join("steady.yaml");
    let original = std::fs::read_to_string("tests/fixtures/pass/steady.yaml").unwrap();
    std::fs::write(&scenario, &original).unwrap();
    // Named directly, spelled differently, or found by searching the folder.
    let aliased = scratch.join(".").join("steady.yaml");
    for (path, flag, target) in [
        (&scenario, "--json", &scenario),
        (&scenario, "--junit", &aliased),
        (&scratch, "--json", &scenario),
    ] {
        let out = gridloop(&["run", path_arg(path), flag, path_arg(target)]);
        assert_code(&out, exit::INVALID_INPUT);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("{flag} names the scenario file")),
            "{err}"
        );
        assert!(out.stdout.is_empty(), "nothing ran");
        assert_eq!(std::fs::read_to_string(&scenario).unwrap(), original);
    }
}

#[test]
fn the_same_file_in_a_folder_still_to_be_made_is_a_usage_error() {
    let scratch = scratch("same-new-folder");
    let out_dir = scratch.join("out");
    for junit in [
        out_dir.join(".").join("junit.xml"),
        out_dir.join("sub").join("..").join("junit.xml"),
    ] {
        let out = gridloop(&[
            "run",
            "tests/fixtures/pass",
            "--junit",
            path_arg(&junit),
            "--report",
            path_arg(&out_dir),
        ]);
        assert_code(&out, exit::INVALID_INPUT);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--junit and --report (junit.xml) name the same file"),
            "{err}"
        );
        assert!(!out_dir.exists(), "nothing was written");
    }
}

#[test]
fn a_scenario_file_starting_with_a_dash_reproduces_after_double_dash() {
    let scratch = scratch("dash-file");
    std::fs::copy(
        "tests/fixtures/fail/impossible-trip.yaml",
        scratch.join("-odd.yaml"),
    )
    .unwrap();
    let in_scratch = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_gridloop"))
            .args(args)
            .current_dir(&scratch)
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    };
    let out = in_scratch(&["run", "--seed", "5", "--report", "out", "--", "-odd.yaml"]);
    assert_code(&out, exit::EXPECTATION_FAILED);
    let md = std::fs::read_to_string(scratch.join("out/summary.md")).unwrap();
    let prefix = "Reproduce this scenario: `gridloop ";
    let line = md
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("{md}"));
    let command = line.strip_suffix('`').unwrap();
    assert_eq!(command, "run --seed 5 -- -odd.yaml");
    // The command as printed runs the same scenario again.
    let args: Vec<&str> = command.split(' ').collect();
    let again = in_scratch(&args);
    assert_code(&again, exit::EXPECTATION_FAILED);
    assert!(String::from_utf8_lossy(&again.stdout).contains("fixture-impossible-trip"));
}

#[test]
fn plots_of_an_earlier_run_are_removed_and_other_files_kept() {
    let dir = scratch("stale").join("report");
    let plots = dir.join("plots");
    std::fs::create_dir_all(&plots).unwrap();
    let stale = plots.join("old-scenario-feeder-z-rms.svg");
    std::fs::write(&stale, "<svg/>").unwrap();
    let stale_png = plots.join("old-scenario-feeder-z-rms.png");
    std::fs::write(&stale_png, b"\x89PNG").unwrap();
    let notes = plots.join("notes.txt");
    std::fs::write(&notes, "mine").unwrap();
    let out = gridloop(&[
        "run",
        "tests/fixtures/pass",
        "--quiet",
        "--report",
        path_arg(&dir),
    ]);
    assert_code(&out, exit::SUCCESS);
    assert!(!stale.exists(), "a plot this run did not draw is gone");
    assert!(!stale_png.exists(), "a PNG this run did not draw is gone");
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "mine");
    assert!(plots.join("fixture-steady-feeder-b-rms.svg").exists());
    assert!(plots.join("fixture-steady-feeder-b-rms.png").exists());
    let count = |ext: &str| {
        std::fs::read_dir(&plots)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == ext)
            })
            .count()
    };
    assert_eq!((count("svg"), count("png")), (6, 6));
}

/// (width, height) from a PNG file's signature and IHDR chunk; `None` when it is not a PNG.
fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    let signature = b"\x89PNG\r\n\x1a\n";
    if bytes.len() < 24 || &bytes[..8] != signature || &bytes[12..16] != b"IHDR" {
        return None;
    }
    let word = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    Some((word(16), word(20)))
}

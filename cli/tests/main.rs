//! End-to-end tests of the `gridloop` binary: exit codes, stdout/stderr contracts and the
//! files it writes; `report` covers `run --report DIR`, `export` covers `export --comtrade`.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use gridloop::exit;

mod broker;
mod calibrate;
mod export;
mod fleet;
mod head_end;
mod hil;
mod hil_run;
mod live;
mod meter;
mod replay;
mod report;

fn gridloop(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gridloop"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("GRIDLOOP_LOG")
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .output()
        .expect("the gridloop binary starts")
}

fn code(out: &Output) -> i32 {
    out.status
        .code()
        .unwrap_or_else(|| panic!("killed by a signal: {out:?}"))
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

fn assert_code(out: &Output, expected: u8) {
    assert_eq!(
        code(out),
        i32::from(expected),
        "stdout:\n{}\nstderr:\n{}",
        stdout(out),
        stderr(out)
    );
}

/// A fresh, empty scratch directory for one test.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gridloop-cli-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn path_arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn usage_errors_exit_2() {
    for argv in [
        &["run", "--bogus"][..],
        &[],
        &["frobnicate"],
        &["run", "--seed", "not-a-number"],
        &["run", "--jobs", "0"],
        &["list", "--filter"],
    ] {
        let out = gridloop(argv);
        assert_code(&out, exit::INVALID_INPUT);
        assert!(
            stderr(&out).starts_with("error: ") || stderr(&out).contains("Usage: gridloop"),
            "{argv:?}: {}",
            stderr(&out)
        );
        assert!(out.stdout.is_empty(), "{argv:?}");
    }
}

#[test]
fn help_and_version_exit_0_on_stdout() {
    let out = gridloop(&["--help"]);
    assert_code(&out, exit::SUCCESS);
    let help = stdout(&out);
    for needle in [
        "run",
        "validate",
        "list",
        "schema",
        "Exit codes:",
        "4  no scenario ran",
    ] {
        assert!(help.contains(needle), "{needle}: {help}");
    }
    let out = gridloop(&["run", "--help"]);
    assert_code(&out, exit::SUCCESS);
    for flag in [
        "--seed",
        "--junit",
        "--json",
        "--filter",
        "--jobs",
        "--quiet",
        "scenarios/library",
    ] {
        assert!(stdout(&out).contains(flag), "{flag}");
    }
    let out = gridloop(&["--version"]);
    assert_code(&out, exit::SUCCESS);
    assert_eq!(
        stdout(&out),
        format!("gridloop {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn missing_path_exits_2() {
    for cmd in ["run", "validate", "list"] {
        let out = gridloop(&[cmd, "tests/fixtures/pass", "tests/no/such/scenario.yaml"]);
        assert_code(&out, exit::INVALID_INPUT);
        let err = stderr(&out);
        assert!(
            err.contains("cannot read tests/no/such/scenario.yaml"),
            "{cmd}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn schema_prints_json() {
    let out = gridloop(&["schema"]);
    assert_code(&out, exit::SUCCESS);
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(schema.is_object());
    let text = stdout(&out);
    for key in ["\"schema\"", "\"meters\"", "\"events\"", "\"expect\""] {
        assert!(text.contains(key), "{key}");
    }
}

#[test]
fn run_passing_fixture_exits_0_and_writes_junit() {
    let dir = scratch("junit");
    let junit = dir.join("results.xml");
    let json = dir.join("results.json");
    let out = gridloop(&[
        "run",
        "tests/fixtures/pass",
        "--junit",
        path_arg(&junit),
        "--json",
        path_arg(&json),
    ]);
    assert_code(&out, exit::SUCCESS);
    assert!(
        stdout(&out).contains("2 scenarios, 4 expectations: 4 passed, 0 failed"),
        "{}",
        stdout(&out)
    );

    let xml = std::fs::read_to_string(&junit).unwrap();
    assert_eq!(xml.matches("<testsuite ").count(), 2);
    assert_eq!(xml.matches("<testcase ").count(), 4);
    assert_eq!(xml.matches("<failure").count(), 0);
    let report = quick_junit::Report::deserialize_from_str(&xml).unwrap();
    let suites: Vec<(&str, usize)> = report
        .test_suites
        .iter()
        .map(|s| (s.name.as_str(), s.test_cases.len()))
        .collect();
    // Discovery is sorted: sag-trips.yaml before steady.yaml. One testcase per expectation.
    assert_eq!(suites, [("fixture-sag-trips", 3), ("fixture-steady", 1)]);
    let case = &report.test_suites[0].test_cases[0];
    assert_eq!(
        case.classname.as_ref().unwrap().as_str(),
        "tests/fixtures/pass/sag-trips.yaml"
    );
    let props: Vec<(&str, &str)> = report.test_suites[0]
        .properties
        .iter()
        .map(|p| (p.name.as_str(), p.value.as_str()))
        .collect();
    assert!(props.contains(&("seed", "42")), "{props:?}");
    assert!(props.contains(&("mode", "sim")), "{props:?}");

    // The JSON document agrees with the JUnit one.
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(doc["format"], "gridloop-results");
    let per_scenario: Vec<usize> = doc["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["expectations"].as_array().unwrap().len())
        .collect();
    assert_eq!(per_scenario, [3, 1]);
    assert_eq!(doc["summary"]["passed"], true);
}

#[test]
fn run_failing_fixture_exits_1_and_says_what_failed() {
    let out = gridloop(&["run", "tests/fixtures/fail/impossible-trip.yaml"]);
    assert_code(&out, exit::EXPECTATION_FAILED);
    let text = stdout(&out);
    let fail_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("FAIL"))
        .unwrap_or_else(|| panic!("no FAIL line: {text}"));
    assert!(fail_line.contains("expected"), "{fail_line}");
    assert!(fail_line.contains("measured"), "{fail_line}");
    assert!(fail_line.contains("UV_TRIP_0x01"), "{fail_line}");
    assert!(text.contains("✗ fixture-impossible-trip"), "{text}");
    assert!(
        text.contains("1 scenario, 2 expectations: 1 passed, 1 failed"),
        "{text}"
    );
}

#[test]
fn bad_scenarios_exit_2_with_file_line_column() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/bad-scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&corpus)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(files.len() >= 25, "the corpus has {} files", files.len());
    for file in &files {
        let out = gridloop(&["run", path_arg(file)]);
        assert_code(&out, exit::INVALID_INPUT);
        let err = stderr(&out);
        assert!(!err.contains("panicked"), "{}: {err}", file.display());
        assert!(out.stdout.is_empty(), "{}: nothing may run", file.display());
        // `<file>:<line>:<column>: ` opens a diagnostic line.
        let prefix = format!("{}:", file.display());
        let located = err.lines().any(|l| {
            let Some(rest) = l.strip_prefix(&prefix) else {
                return false;
            };
            let mut parts = rest.splitn(3, ':');
            let (line, column) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            line.parse::<usize>().is_ok_and(|n| n > 0)
                && column.parse::<usize>().is_ok_and(|n| n > 0)
        });
        assert!(located, "{}: no file:line:column in\n{err}", file.display());
    }
    // All of them at once: every file is reported, still nothing runs.
    let out = gridloop(&["run", path_arg(&corpus)]);
    assert_code(&out, exit::INVALID_INPUT);
    let err = stderr(&out);
    for file in &files {
        let name = file.file_name().unwrap().to_str().unwrap();
        assert!(err.contains(name), "{name} not reported");
    }
}

#[test]
fn json_is_byte_identical_for_a_seed_and_changes_with_it() {
    let dir = scratch("json");
    let run = |seed: &str, name: &str| {
        let path = dir.join(name);
        let out = gridloop(&[
            "run",
            "tests/fixtures/pass",
            "--quiet",
            "--seed",
            seed,
            "--json",
            path_arg(&path),
        ]);
        assert_code(&out, exit::SUCCESS);
        std::fs::read(&path).unwrap()
    };
    let a = run("11", "a.json");
    let b = run("11", "b.json");
    let c = run("12", "c.json");
    assert_eq!(a, b, "same scenarios and seed must give the same bytes");
    assert_ne!(a, c, "another seed must change the document");
    let doc_a: serde_json::Value = serde_json::from_slice(&a).unwrap();
    let doc_c: serde_json::Value = serde_json::from_slice(&c).unwrap();
    assert_eq!(doc_a["summary"]["seed_override"], 11);
    assert_eq!(doc_a["scenarios"][0]["seed"], 11);
    assert_eq!(doc_c["scenarios"][0]["seed"], 12);
    // Only the random parts change: the verdicts and what was judged do not.
    for i in 0..2 {
        let labels = |d: &serde_json::Value| {
            d["scenarios"][i]["expectations"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| (e["label"].clone(), e["passed"].clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(labels(&doc_a), labels(&doc_c));
    }
    // The noisy, jittery scenario's measurements depend on the seed.
    assert_ne!(
        doc_a["scenarios"][0]["stats"],
        doc_c["scenarios"][0]["stats"]
    );
}

#[test]
fn filter_matching_nothing_exits_4() {
    let out = gridloop(&["run", "tests/fixtures/pass", "--filter", "no-such-tag"]);
    assert_code(&out, exit::NOTHING_RAN);
    assert!(stderr(&out).contains("no-such-tag"), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
    let out = gridloop(&["list", "tests/fixtures/pass", "--filter", "no-such-tag"]);
    assert_code(&out, exit::NOTHING_RAN);
    let empty = scratch("empty");
    let out = gridloop(&["run", path_arg(&empty)]);
    assert_code(&out, exit::NOTHING_RAN);
}

#[test]
fn validate_and_list_fixtures() {
    let out = gridloop(&["validate", "tests/fixtures"]);
    assert_code(&out, exit::SUCCESS);
    assert_eq!(
        stdout(&out),
        "ok  tests/fixtures/fail/impossible-trip.yaml  fixture-impossible-trip\n\
         ok  tests/fixtures/pass/sag-trips.yaml  fixture-sag-trips\n\
         ok  tests/fixtures/pass/steady.yaml  fixture-steady\n"
    );
    let out = gridloop(&[
        "list",
        "tests/fixtures",
        "--filter",
        "sag",
        "--filter",
        "steady",
    ]);
    assert_code(&out, exit::SUCCESS);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with("NAME"));
    let cols: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        cols,
        [
            "fixture-sag-trips",
            "fixture,sag",
            "3",
            "s",
            "2",
            "feeder-a",
            "tests/fixtures/pass/sag-trips.yaml"
        ]
    );
    assert!(lines[2].starts_with("fixture-steady"));
}

#[test]
fn unwritable_report_file_exits_3_before_running() {
    let out = gridloop(&[
        "run",
        "tests/fixtures/pass",
        "--junit",
        "tests/no/such/dir/results.xml",
    ]);
    assert_code(&out, exit::ENVIRONMENT);
    assert!(
        stderr(&out).contains("cannot create the JUnit file"),
        "{}",
        stderr(&out)
    );
    assert!(out.stdout.is_empty(), "nothing ran");
}

#[test]
fn junit_and_json_to_the_same_file_is_a_usage_error_before_running() {
    let dir = scratch("same-report-file");
    let report = dir.join("results.out");
    // Spelled differently, the same file: `dir/./results.out`.
    let aliased = dir.join(".").join("results.out");
    for (junit, json) in [(&report, &report), (&report, &aliased)] {
        let out = gridloop(&[
            "run",
            "tests/fixtures/pass",
            "--junit",
            path_arg(junit),
            "--json",
            path_arg(json),
        ]);
        assert_code(&out, exit::INVALID_INPUT);
        assert!(
            stderr(&out).contains("--junit and --json name the same file"),
            "{}",
            stderr(&out)
        );
        assert!(out.stdout.is_empty(), "nothing ran: {}", stdout(&out));
        assert!(!report.exists(), "no report file is written");
    }
}

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
    let out = gridloop(&[
        "run",
        "tests/fixtures/pass",
        "--quiet",
        "--report",
        path_arg(&dir),
        "--json",
        path_arg(&json),
        "--junit",
        path_arg(&junit),
    ]);
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
    for name in ["results.json", "junit.xml"] {
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

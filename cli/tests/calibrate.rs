//! `gridloop calibrate` against a running `gridloop meter`: old → new gains, the repeat is a
//! no-op, and the exit codes for bad input (2) and no meter (3).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gridloop::exit;

use crate::{assert_code, code, gridloop, stderr, stdout};

const SAG: &str = "../scenarios/library/sags-swells/sag-75pct-12-cycles.yaml";

/// A `gridloop meter` child, killed on drop.
struct MeterProcess(Child);

impl Drop for MeterProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start a meter on a free port; returns it and its printed address.
fn start_meter() -> (MeterProcess, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gridloop"))
        .args([
            "meter",
            SAG,
            "--listen",
            "127.0.0.1:0",
            "--linger",
            "60s",
            "--event-log",
            "none",
            // Only the first stdout line is read: no `broker:` line to write into a closed pipe.
            "--broker",
            "none",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .strip_prefix("modbus listening on ")
        .and_then(|rest| rest.split(": ").next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    (MeterProcess(child), addr)
}

#[test]
fn calibrate_a_running_meter_twice() {
    let (_meter, addr) = start_meter();
    let argv = [
        "calibrate",
        "--modbus",
        &addr,
        "--reference",
        "230",
        "--phase",
        "all",
    ];
    // The meter refuses (exit 2) until its first 10/12-cycle reading, 0.2 s after start:
    // retry on that refusal only, with a deadline.
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = loop {
        let out = gridloop(&argv);
        if code(&out) == 0 || !stderr(&out).contains("no reading yet") {
            break out;
        }
        assert!(Instant::now() < deadline, "{}", stderr(&out));
    };
    assert_code(&first, exit::SUCCESS);
    let text = stdout(&first);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    for (line, p) in lines.iter().zip(["L1", "L2", "L3"]) {
        // 230 V from a 240 V supply: gain ≈ 0.9583.
        let new: f64 = line
            .strip_prefix(&format!("{p} gain 1.000000 -> "))
            .unwrap_or_else(|| panic!("{text}"))
            .parse()
            .unwrap();
        assert!((new - 230.0 / 240.0).abs() < 0.002, "{text}");
    }
    assert_eq!(lines[3], "CAL_COUNT 0 -> 1");

    let second = gridloop(&argv);
    assert_code(&second, exit::SUCCESS);
    let text = stdout(&second);
    assert_eq!(text.matches("(unchanged)").count(), 3, "{text}");
    assert!(text.ends_with("CAL_COUNT 1 -> 1\n"), "{text}");
}

#[test]
fn calibrate_bad_input_exits_2_and_no_meter_exits_3() {
    for (argv, needle) in [
        (
            vec!["calibrate", "--modbus", "127.0.0.1:1", "--reference", "500"],
            "--reference 500: expected 90–480 V",
        ),
        (
            vec![
                "calibrate",
                "--modbus",
                "127.0.0.1:1",
                "--reference",
                "230",
                "--phase",
                "L4",
            ],
            "expected all, L1, L2 or L3",
        ),
        (
            vec![
                "calibrate",
                "--modbus",
                "127.0.0.1:1",
                "--reference",
                "230",
                "--encoding",
                "x",
            ],
            "bad --encoding `x`",
        ),
    ] {
        let out = gridloop(&argv);
        assert_code(&out, exit::INVALID_INPUT);
        assert!(stderr(&out).contains(needle), "{argv:?}: {}", stderr(&out));
    }
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let out = gridloop(&["calibrate", "--modbus", &addr, "--reference", "230"]);
    assert_code(&out, exit::ENVIRONMENT);
    assert!(
        stderr(&out).contains("cannot connect to"),
        "{}",
        stderr(&out)
    );
}

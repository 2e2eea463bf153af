//! `gridloop head-end`: a fleet's trips over a Mosquitto the test runs (printed, stored,
//! restored), the encoding handshake against a `gridloop meter` and a `gridloop fleet` over
//! Modbus, bad flags (exit 2 naming the flag) and an unreachable broker (exit 3).

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use gridloop::exit;
use virtual_meter::broker::{find_program, SpawnedMosquitto};

use crate::{assert_code, gridloop, path_arg, scratch, stderr, stdout};

const FLEET: &str = "../scenarios/library/network/grid-wide-sag-fleet.yaml";
const SAG: &str = "../scenarios/library/sags-swells/sag-75pct-12-cycles.yaml";

/// Whether Mosquitto tests can run (without it they are skipped, unless CI requires peers).
fn mosquitto_available() -> bool {
    if find_program("mosquitto").is_some() {
        return true;
    }
    assert!(
        std::env::var_os("GRIDLOOP_REQUIRE_PEERS").is_none(),
        "GRIDLOOP_REQUIRE_PEERS is set but mosquitto is not installed"
    );
    false
}

/// A `gridloop` child whose stdout and stderr lines arrive on channels; killed on drop.
struct Running {
    child: Child,
    out: Receiver<String>,
    err: Receiver<String>,
}

fn lines_of(pipe: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

impl Running {
    fn start(args: &[&str]) -> Running {
        let mut child = Command::new(env!("CARGO_BIN_EXE_gridloop"))
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env_remove("GRIDLOOP_LOG")
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = lines_of(child.stdout.take().unwrap());
        let err = lines_of(child.stderr.take().unwrap());
        Running { child, out, err }
    }

    /// SIGINT (Ctrl-C), then the exit code within `limit`.
    fn interrupt(&mut self, limit: Duration) -> i32 {
        let sent = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().expect("exited, not killed by a signal");
            }
            assert!(Instant::now() < deadline, "no exit within {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The next line on `rx` that `pred` accepts, before `deadline`; the lines skipped are kept
/// in `seen` for the failure message.
fn wait_for_line(
    rx: &Receiver<String>,
    deadline: Instant,
    seen: &mut Vec<String>,
    pred: impl Fn(&str) -> bool,
) -> String {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if pred(&line) => return line,
            Ok(line) => seen.push(line),
            Err(e) => panic!("no such line ({e:?}); seen:\n{}", seen.join("\n")),
        }
    }
}

/// Every line `rx` gives until it is closed (the child exited), bounded by `deadline`.
fn rest_of(rx: &Receiver<String>, deadline: Instant) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(mpsc::RecvTimeoutError::Disconnected) => return lines,
            Err(e) => panic!("output not closed in time ({e:?}): {lines:?}"),
        }
    }
}

fn read_store(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `(kind, code, name, phase)` of an alarm as JSON.
fn key(a: &serde_json::Value) -> (String, String, String, String) {
    let s = |k: &str| a[k].as_str().unwrap_or("").to_owned();
    (s("kind"), s("code"), s("name"), s("phase"))
}

/// The 9 trips and 9 clears of a 3-meter grid-wide sag fleet (one meter per substation).
fn expected_sag_alarms() -> Vec<(String, String, String, String)> {
    let mut want = Vec::new();
    for (kind, code) in [("CLEAR", "UV_CLEAR_0x81"), ("TRIP", "UV_TRIP_0x01")] {
        for sub in 1..=3 {
            for phase in ["L1", "L2", "L3"] {
                want.push((
                    kind.to_owned(),
                    code.to_owned(),
                    format!("sub{sub}-feeder1-0000"),
                    phase.to_owned(),
                ));
            }
        }
    }
    want
}

#[test]
fn head_end_prints_and_stores_a_fleets_trips_and_restores_them() {
    if !mosquitto_available() {
        return;
    }
    let broker = SpawnedMosquitto::start().unwrap();
    let url = format!("mqtt://{}", broker.addr());
    let dir = scratch("head-end-fleet");
    let store = dir.join("alarms.jsonl");
    let head_end_args = [
        "head-end",
        "--broker",
        &url,
        "--client-id",
        "he-test",
        "--store",
        path_arg(&store),
        "--json-alarms",
    ];
    let mut he = Running::start(&head_end_args);
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    let restored = wait_for_line(&he.err, deadline, &mut seen, |l| l.contains("restored"));
    assert_eq!(
        restored,
        format!(
            "head-end he-test: restored 0 alarms from {}",
            store.display()
        )
    );
    wait_for_line(&he.err, deadline, &mut seen, |l| {
        l.starts_with("head-end he-test: subscribed at ")
    });

    // 3 meters, one per substation; the 0.55 pu sag at 3 s trips all three phases of each.
    let out = gridloop(&[
        "fleet",
        FLEET,
        "--meters",
        "3",
        "--no-modbus",
        "--broker",
        &url,
        "--duration",
        "4s",
        "--event-log",
        "none",
        "-q",
    ]);
    assert_code(&out, exit::SUCCESS);

    // The fleet flushed everything before it exited: 18 alarms, each on stdout as JSON.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut printed = Vec::new();
    let mut skipped = Vec::new();
    while printed.len() < 18 {
        let line = wait_for_line(&he.out, deadline, &mut skipped, |_| true);
        let alarm: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not a JSON alarm ({e}): {line}"));
        printed.push(alarm);
    }
    assert_eq!(he.interrupt(Duration::from_secs(15)), 0);
    let tail = rest_of(&he.out, Instant::now() + Duration::from_secs(5));
    assert!(tail.is_empty(), "no alarm beyond the 18: {tail:?}");
    let err = rest_of(&he.err, Instant::now() + Duration::from_secs(5));
    let summary = err.last().unwrap();
    assert!(summary.starts_with("interrupted: "), "{err:?}");
    for needle in [
        "0 duplicates, 0 refused",
        "18 alarms (9 CLEAR, 9 TRIP), 18 stored in",
        "(0 restored)",
        "mqtt: 1 connects, 0 connection errors",
    ] {
        assert!(summary.contains(needle), "{needle}: {summary}");
    }

    let mut got: Vec<_> = printed.iter().map(key).collect();
    got.sort();
    assert_eq!(got, expected_sag_alarms());
    for a in &printed {
        assert_eq!(a["instance"], "he-test", "{a}");
        let (source, receive) = (a["source_ms"].as_u64(), a["receive_ms"].as_u64());
        let latency = a["latency_ms"].as_i64().unwrap();
        assert_eq!(
            receive.unwrap() as i64 - source.unwrap() as i64,
            latency,
            "{a}"
        );
        assert!((0..5_000).contains(&latency), "{a}");
    }
    // The store holds exactly what was printed.
    let stored = read_store(&store);
    assert_eq!(stored, printed);

    // A restart with the same store and client id: every alarm restored, none raised again.
    let mut args = head_end_args.to_vec();
    args.extend(["--duration", "1s"]);
    let out = gridloop(&args);
    assert_code(&out, exit::SUCCESS);
    assert_eq!(stdout(&out), "", "nothing new to raise");
    let err = stderr(&out);
    assert!(
        err.starts_with(&format!(
            "head-end he-test: restored 18 alarms from {}\n",
            store.display()
        )),
        "{err}"
    );
    assert!(err.contains("; 0 alarms, 0 stored in"), "{err}");
    assert_eq!(read_store(&store).len(), 18);
}

/// The first line of a `gridloop meter`: `modbus listening on ADDR: …`.
fn meter_address(meter: &Running) -> String {
    let mut seen = Vec::new();
    let line = wait_for_line(
        &meter.out,
        Instant::now() + Duration::from_secs(15),
        &mut seen,
        |l| l.starts_with("modbus listening on "),
    );
    line["modbus listening on ".len()..]
        .split(": ")
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn head_end_polls_a_meter_and_flags_a_mismatched_encoding() {
    let dir = scratch("head-end-modbus");
    // The meter serves int16 ×0.1; it lingers well past the head-end runs and is killed after.
    let meter = Running::start(&[
        "meter",
        SAG,
        "--listen",
        "127.0.0.1:0",
        "--encoding",
        "int16:0.1",
        "--broker",
        "none",
        "--event-log",
        "none",
        "--linger",
        "60s",
    ]);
    let addr = meter_address(&meter);
    let run = |expected: &str, store: &str| {
        let store = dir.join(store);
        gridloop(&[
            "head-end",
            "--broker",
            "none",
            "--poll",
            &addr,
            "--encoding",
            expected,
            "--poll-interval",
            "100ms",
            "--duration",
            "2s",
            "--store",
            path_arg(&store),
        ])
    };
    // Both at once: the wrong expectation and the right one.
    let (wrong, right) = std::thread::scope(|s| {
        let wrong = s.spawn(|| run("float32", "wrong.jsonl"));
        let right = s.spawn(|| run("int16:0.1", "right.jsonl"));
        (wrong.join().unwrap(), right.join().unwrap())
    });
    drop(meter);

    assert_code(&wrong, exit::SUCCESS);
    let text = stdout(&wrong);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "one alarm, raised once: {text}");
    let prefix = format!("ALARM ENCODING_MISMATCH {addr} ");
    assert!(lines[0].starts_with(&prefix), "{text}");
    assert!(
        lines[0].contains(": expected float32 ABCD")
            && lines[0].contains("the meter serves 1 register(s) where float32 ABCD needs 2"),
        "the detail says what was expected and what was found: {text}"
    );
    let err = stderr(&wrong);
    assert!(
        err.contains("1 alarm (1 ENCODING_MISMATCH), 1 stored in")
            && err.contains("0 readings (0 stored, 0 refused)")
            && err.contains(" 1 mismatches"),
        "{err}"
    );
    let stored = read_store(&dir.join("wrong.jsonl"));
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["kind"], "ENCODING_MISMATCH");

    // The right expectation: readings, no alarm.
    assert_code(&right, exit::SUCCESS);
    assert_eq!(stdout(&right), "", "{}", stderr(&right));
    let err = stderr(&right);
    assert!(
        err.contains("; 0 alarms, 0 stored in") && err.contains(" 0 mismatches"),
        "{err}"
    );
    let readings: u64 = err
        .split(" readings (")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no stored-readings count in {err}"));
    assert!(readings >= 5, "2 s at 100 ms: {err}");
}

/// Three consecutive free ports on 127.0.0.1 right now (see `fleet::two_free_ports`).
fn three_free_ports() -> u16 {
    for _ in 0..50 {
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = a.local_addr().unwrap().port();
        if base < u16::MAX - 2
            && TcpListener::bind(("127.0.0.1", base + 1)).is_ok()
            && TcpListener::bind(("127.0.0.1", base + 2)).is_ok()
        {
            return base;
        }
    }
    panic!("no three consecutive free ports on 127.0.0.1 in 50 tries");
}

#[test]
fn poll_fleet_reaches_every_meter_a_fleet_serves_by_name() {
    let base = format!("127.0.0.1:{}", three_free_ports());
    let dir = scratch("head-end-poll-fleet");
    let fleet = Running::start(&[
        "fleet",
        FLEET,
        "--meters",
        "3",
        "--modbus-base",
        &base,
        "--broker",
        "none",
        "--event-log",
        "none",
        "-q",
    ]);
    let mut seen = Vec::new();
    wait_for_line(
        &fleet.out,
        Instant::now() + Duration::from_secs(15),
        &mut seen,
        |l| l.starts_with("fleet grid-wide-sag-fleet: 3 of 3 meters"),
    );
    // The fleet serves float32; expecting int16 makes every meter say who it is.
    let out = gridloop(&[
        "head-end",
        "--broker",
        "none",
        "--poll-fleet",
        FLEET,
        "--meters",
        "3",
        "--modbus-base",
        &base,
        "--encoding",
        "int16:0.1",
        "--poll-interval",
        "100ms",
        "--duration",
        "1500ms",
        "--store",
        path_arg(&dir.join("alarms.jsonl")),
    ]);
    drop(fleet);
    assert_code(&out, exit::SUCCESS);
    let text = stdout(&out);
    let mut names: Vec<&str> = text
        .lines()
        .map(|l| {
            l.strip_prefix("ALARM ENCODING_MISMATCH ")
                .and_then(|r| r.split(' ').next())
                .unwrap_or_else(|| panic!("{l}"))
        })
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "sub1-feeder1-0000",
            "sub2-feeder1-0000",
            "sub3-feeder1-0000"
        ],
        "{text}"
    );
    assert!(
        stderr(&out).contains("polling 3 meters on 3 Modbus addresses"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn head_end_bad_flags_exit_2_naming_the_flag() {
    for (args, needle) in [
        (&["--stale-after", "0s"][..], "--stale-after"),
        (&["--poll-interval", "10cycles"], "--poll-interval"),
        (&["--duration", "soon"], "--duration"),
        (&["--poll", "nowhere"], "--poll"),
        (&["--poll", "127.0.0.1:502@300"], "--poll"),
        (&["--broker", "none", "--encoding", "float64"], "--encoding"),
        (&["--retries", "1000"], "--retries"),
        (&["--gateway"], "--poll-fleet"),
        (&["--shard", "1/2"], "--poll-fleet"),
        (&["--poll-fleet", FLEET, "--shard", "3/2"], "--shard"),
        (
            &["--poll", "127.0.0.1:502", "--poll-fleet", FLEET],
            "--poll",
        ),
        (&["--broker", "ftp://example.org"], "--broker"),
        (&["--broker", "none"], "--broker none"),
        (&["--substation", "a/b"], "--substation"),
        (&["--share", "#"], "--share"),
        (
            &["--broker", "none", "--poll", "127.0.0.1:9", "--share", "g"],
            "--share",
        ),
        (
            &["--poll-fleet", "tests/no/such.yaml"],
            "cannot read tests/no/such.yaml",
        ),
    ] {
        let mut argv = vec!["head-end"];
        argv.extend_from_slice(args);
        let out = gridloop(&argv);
        assert_code(&out, exit::INVALID_INPUT);
        let err = stderr(&out);
        assert!(
            err.starts_with("error: ") && err.contains(needle),
            "{args:?}: {err}"
        );
        assert!(out.stdout.is_empty(), "{args:?}: nothing runs");
    }
}

#[test]
fn head_end_unreachable_broker_exits_3() {
    // A port that was free a moment ago: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = scratch("head-end-no-broker");
    let url = format!("mqtt://127.0.0.1:{port}");
    let out = gridloop(&[
        "head-end",
        "--broker",
        &url,
        "--store",
        path_arg(&dir.join("alarms.jsonl")),
    ]);
    assert_code(&out, exit::ENVIRONMENT);
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "error: cannot reach the broker {url} at 127.0.0.1:{port}"
        )),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

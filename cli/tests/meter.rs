//! `gridloop meter`: the printed address, the end of the scenario, and bad input.

use std::net::TcpListener;

use gridloop::exit;

use crate::{assert_code, gridloop, scratch, stderr, stdout};

const SAG: &str = "../scenarios/library/sags-swells/sag-75pct-12-cycles.yaml";

#[test]
fn meter_prints_its_address_and_ends_with_the_grid_time() {
    // Real time by design: 0.2 s of grid time takes 0.2 s.
    let out = gridloop(&[
        "meter",
        SAG,
        "--listen",
        "127.0.0.1:0",
        "--duration",
        "0.2s",
        "--event-log",
        "none",
    ]);
    assert_code(&out, exit::SUCCESS);
    let line = stdout(&out);
    let addr = line
        .strip_prefix("modbus listening on ")
        .and_then(|rest| rest.split(':').take(2).collect::<Vec<_>>().get(1).copied())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    let port: u16 = addr.parse().unwrap();
    assert_ne!(port, 0, "{line}");
    assert!(line.contains("meter feeder-a/0 (any unit id), scenario sag-75pct-12-cycles"));
    // The grid time reached is exact; the step count is 20 on an idle machine and fewer when
    // a busy one skips ticks (counted as overruns, not asserted here).
    let err = stderr(&out);
    assert!(err.starts_with("done: grid time 0.200 s in "), "{err}");
    let steps: u32 = err["done: grid time 0.200 s in ".len()..]
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no step count in {err:?}"));
    assert!((1..=20).contains(&steps), "{err}");
}

#[test]
fn meter_bad_input_exits_2_and_busy_port_exits_3() {
    let dir = scratch("meter-map");
    let map = dir.join("register_map.conf");
    std::fs::write(&map, "VOLTAGE_L1_REG = 0x0024\nVOLTAGE_L2_REG = 0x0025\n").unwrap();
    let map = map.to_str().unwrap();
    let yaml = dir.join("map.yaml");
    std::fs::write(
        &yaml,
        "VOLTAGE_L1_REG: 0x0024\nVOLTAGE_L2_REG: { address: 0x1_0000 }\n",
    )
    .unwrap();
    let yaml = yaml.to_str().unwrap().to_string();
    for (args, needle) in [
        (vec!["--map", map], "register_map.conf:2: `VOLTAGE_L2_REG` is a 32-bit value and must start at an even address"),
        (vec!["--encoding", "float64"], "bad --encoding `float64`"),
        (vec!["--group", "nope"], "no group `nope` in the scenario (groups: feeder-a)"),
        (vec!["--units", "5"], "--units 5 but group `feeder-a` has 4 meters"),
        (vec!["--duration", "3"], "--duration: duration needs a unit"),
        (vec!["--idle-timeout", "soon"], "--idle-timeout: "),
        (vec!["--map", &yaml], ":2:28: VOLTAGE_L2_REG.address: bad address `0x1_0000`"),
    ] {
        let mut argv = vec!["meter", SAG, "--listen", "127.0.0.1:0", "--event-log", "none"];
        argv.extend(args);
        let out = gridloop(&argv);
        assert_code(&out, exit::INVALID_INPUT);
        assert!(stderr(&out).contains(needle), "{argv:?}: {}", stderr(&out));
        assert_eq!(stdout(&out), "", "nothing listens");
    }
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let out = gridloop(&["meter", SAG, "--listen", &addr, "--event-log", "none"]);
    assert_code(&out, exit::ENVIRONMENT);
    assert!(
        stderr(&out).contains(&format!("cannot listen on {addr}")),
        "{}",
        stderr(&out)
    );
}

#[test]
fn meter_writes_its_event_log_and_loads_a_yaml_map() {
    // Real time by design: 1.3 s of grid time, through the 1 s sag's trip and clear.
    let dir = scratch("meter-event-log");
    let log = dir.join("voltage_events.log");
    let map = dir.join("map.yml");
    std::fs::write(&map, "VOLTAGE_L1_REG: 0x0024\nSTATUS_REG: 0x0026\n").unwrap();
    let out = gridloop(&[
        "meter",
        SAG,
        "--listen",
        "127.0.0.1:0",
        "--duration",
        "1.3s",
        "--map",
        map.to_str().unwrap(),
        "--idle-timeout",
        "5s",
        "--event-log",
        log.to_str().unwrap(),
    ]);
    assert_code(&out, exit::SUCCESS);
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with("t=1.0"), "{text}");
    assert!(
        lines[0].contains(" meter=feeder-a/0 code=UV_TRIP_0x01 phase=L1 "),
        "{text}"
    );
    assert!(lines[1].contains(" code=UV_CLEAR_0x81 phase=L1 "), "{text}");
}

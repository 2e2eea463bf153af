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
    let err = stderr(&out);
    assert!(
        err.starts_with("done: grid time 0.200 s in 20 steps"),
        "{err}"
    );
}

#[test]
fn meter_bad_input_exits_2_and_busy_port_exits_3() {
    let dir = scratch("meter-map");
    let map = dir.join("register_map.conf");
    std::fs::write(&map, "VOLTAGE_L1_REG = 0x0024\nVOLTAGE_L2_REG = 0x0025\n").unwrap();
    let map = map.to_str().unwrap();
    for (args, needle) in [
        (vec!["--map", map], "register_map.conf:2: `VOLTAGE_L2_REG` is a 32-bit value and must start at an even address"),
        (vec!["--encoding", "float64"], "bad --encoding `float64`"),
        (vec!["--group", "nope"], "no group `nope` in the scenario (groups: feeder-a)"),
        (vec!["--units", "5"], "--units 5 but group `feeder-a` has 4 meters"),
        (vec!["--duration", "3"], "--duration: duration needs a unit"),
    ] {
        let mut argv = vec!["meter", SAG, "--listen", "127.0.0.1:0"];
        argv.extend(args);
        let out = gridloop(&argv);
        assert_code(&out, exit::INVALID_INPUT);
        assert!(stderr(&out).contains(needle), "{argv:?}: {}", stderr(&out));
        assert_eq!(stdout(&out), "", "nothing listens");
    }
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let out = gridloop(&["meter", SAG, "--listen", &addr]);
    assert_code(&out, exit::ENVIRONMENT);
    assert!(
        stderr(&out).contains(&format!("cannot listen on {addr}")),
        "{}",
        stderr(&out)
    );
}

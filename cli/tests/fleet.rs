//! `gridloop fleet`: 300 meters behind Modbus gateways publishing to a spawned Mosquitto (no
//! loss, every trip, the gateways answer), `--shard` and `--modbus-base` usage errors, and the
//! shard split.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gridloop::exit;
use tokio_modbus::client::{tcp, Context, Reader};
use tokio_modbus::prelude::SlaveContext;
use tokio_modbus::{ExceptionCode, Slave};
use virtual_meter::broker::find_program;
use virtual_meter::registers::VOLTAGE_L1_REG;

use crate::{assert_code, gridloop, path_arg, scratch, stderr, stdout};

const FLEET: &str = "../scenarios/library/network/grid-wide-sag-fleet.yaml";
/// STATUS_REG and SOURCE_TIME_REG (uint32 ms, ABCD) of the default map; VALID is bit 15.
const STATUS_REG: u16 = 0x0048;
const SOURCE_TIME_REG: u16 = 0x0050;
const VALID: u16 = 1 << 15;
const NOMINAL: f32 = 240.0;

/// A base port with `base` and `base + 1` both free on 127.0.0.1 right now (bound and
/// released: another process could take them before the fleet binds, which fails the test
/// loudly with exit 3, not silently).
fn two_free_ports() -> u16 {
    for _ in 0..50 {
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = a.local_addr().unwrap().port();
        if base < u16::MAX && TcpListener::bind(("127.0.0.1", base + 1)).is_ok() {
            return base;
        }
    }
    panic!("no two consecutive free ports on 127.0.0.1 in 50 tries");
}

fn f32_abcd(regs: &[u16]) -> f32 {
    f32::from_bits(u32::from(regs[0]) << 16 | u32::from(regs[1]))
}

/// Read VOLTAGE_L1 of `unit` at `addr` once its 10/12-cycle values are valid, and check it
/// against the scenario: 240 V before the sag at 3 s, the 0.55 pu sag's range after.
async fn check_voltage(ctx: &mut Context, addr: SocketAddr, unit: u8, deadline: Instant) {
    ctx.set_slave(Slave(unit));
    let block = loop {
        let block = ctx
            .read_holding_registers(STATUS_REG, SOURCE_TIME_REG + 2 - STATUS_REG)
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{addr} unit {unit}: exception {e:?}"));
        if block[0] & VALID != 0 {
            break block;
        }
        assert!(
            Instant::now() < deadline,
            "{addr} unit {unit}: no valid reading before the deadline"
        );
        // The fleet runs on the wall clock in another process: polling is the only way.
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let regs = ctx
        .read_holding_registers(VOLTAGE_L1_REG, 2)
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{addr} unit {unit}: exception {e:?}"));
    let v = f32_abcd(&regs);
    let offset = usize::from(SOURCE_TIME_REG - STATUS_REG);
    let ms = u32::from(block[offset]) << 16 | u32::from(block[offset + 1]);
    if ms < 3000 {
        assert!(
            (v - NOMINAL).abs() < 0.01 * NOMINAL,
            "{addr} unit {unit}: VOLTAGE_L1 = {v} V at {ms} ms, before the sag"
        );
    } else {
        assert!(
            (0.5 * NOMINAL..1.01 * NOMINAL).contains(&v),
            "{addr} unit {unit}: VOLTAGE_L1 = {v} V at {ms} ms"
        );
    }
}

async fn check_exception(ctx: &mut Context, addr: SocketAddr, unit: u8) {
    ctx.set_slave(Slave(unit));
    assert_eq!(
        ctx.read_holding_registers(VOLTAGE_L1_REG, 2).await.unwrap(),
        Err(ExceptionCode::GatewayTargetDevice),
        "{addr} unit {unit}: no meter behind it"
    );
}

#[test]
fn fleet_of_300_behind_gateways_publishes_everything_to_mosquitto() {
    if find_program("mosquitto").is_none() {
        assert!(
            std::env::var_os("GRIDLOOP_REQUIRE_PEERS").is_none(),
            "GRIDLOOP_REQUIRE_PEERS is set but mosquitto is not installed"
        );
        return;
    }
    let dir = scratch("fleet-300");
    let summary = dir.join("summary.json");
    let log = dir.join("voltage_events.log");
    let base = two_free_ports();
    let base_arg = format!("127.0.0.1:{base}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_gridloop"))
        .args([
            "fleet",
            FLEET,
            "--meters",
            "300",
            "--gateway",
            "--modbus-base",
            &base_arg,
            "--broker",
            "spawn:mosquitto",
            "--duration",
            "4s",
            "--summary-json",
            path_arg(&summary),
            "--event-log",
            path_arg(&log),
            "-q",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("GRIDLOOP_LOG")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    // The first line comes once the listeners are bound (EOF if the fleet exits instead).
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    let gw0: SocketAddr = format!("127.0.0.1:{base}").parse().unwrap();
    let gw1: SocketAddr = format!("127.0.0.1:{}", base + 1).parse().unwrap();
    assert_eq!(
        first,
        format!(
            "fleet grid-wide-sag-fleet: 300 of 300 meters (shard 1/1), modbus on {gw0} … {gw1} \
             (unit ids 1..=247 per port)\n"
        )
    );
    // 300 meters: 247 behind the first gateway (units 1..=247), 53 behind the second.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut ctx = tcp::connect_slave(gw0, Slave(1)).await.unwrap();
        check_voltage(&mut ctx, gw0, 1, deadline).await;
        check_voltage(&mut ctx, gw0, 247, deadline).await;
        check_exception(&mut ctx, gw0, 248).await;
        let mut ctx = tcp::connect_slave(gw1, Slave(1)).await.unwrap();
        check_voltage(&mut ctx, gw1, 1, deadline).await;
        check_voltage(&mut ctx, gw1, 53, deadline).await;
        check_exception(&mut ctx, gw1, 54).await;
        check_exception(&mut ctx, gw1, 248).await;
    });
    // Bounded: the fleet stops at 4 s of grid time; a hung one is killed after 30 s.
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("the fleet did not end within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "stdout: {first}{rest}\nstderr: {err}"
    );
    assert!(
        rest.starts_with("broker: spawned mosquitto on 127.0.0.1:"),
        "{rest}"
    );

    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or_else(|| panic!("{v} in {doc:#}"));
    assert_eq!(n(&doc["meters"]), 300);
    assert_eq!(n(&doc["modbus_listeners"]), 2);
    assert_eq!(doc["grid_time_s"], 4.0);
    assert_eq!(doc["interrupted"], false);
    // The 0.55 pu sag at 3 s hits all three phases of every meter: one UV trip each.
    assert_eq!(n(&doc["trips"]), 900, "{doc:#}");
    assert_eq!(n(&doc["overflowed"]), 0, "{doc:#}");
    assert_eq!(n(&doc["buffered"]), 0, "{doc:#}");
    // No loss: everything the meters produced was published once and acknowledged.
    let produced = n(&doc["produced"]);
    assert!(produced >= 900 * 2, "trips and clears at least: {doc:#}");
    assert_eq!(n(&doc["mqtt"]["published"]), produced, "{doc:#}");
    assert_eq!(n(&doc["mqtt"]["acked"]), produced, "{doc:#}");
    assert_eq!(n(&doc["mqtt"]["resent"]), 0, "{doc:#}");
    assert_eq!(n(&doc["mqtt"]["encapsulation_errors"]), 0, "{doc:#}");
    let links = &doc["links"];
    assert_eq!(n(&links["links"]), 300, "{doc:#}");
    assert_eq!(n(&links["flushed"]), 300, "{doc:#}");
    assert_eq!(n(&links["failed"]), 0, "{doc:#}");
    for k in ["unacked", "unsent", "left_in_ring"] {
        assert_eq!(n(&links[k]), 0, "{k}: {doc:#}");
    }
    // The event log agrees: 900 trips, each of 300 meters once per phase.
    let text = std::fs::read_to_string(&log).unwrap();
    let trips: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(" code=UV_TRIP_0x01 "))
        .collect();
    assert_eq!(trips.len(), 900);
    for phase in ["L1", "L2", "L3"] {
        let on = format!(" phase={phase} ");
        assert_eq!(trips.iter().filter(|l| l.contains(&on)).count(), 300);
    }
    assert!(
        err.contains(&format!(
            "mqtt: {produced} published, {produced} acknowledged, 0 reconnects"
        )) && err.contains("300 of 300 links flushed"),
        "{err}"
    );
}

#[test]
fn fleet_bad_shard_and_exhausted_ports_exit_2() {
    for (shard, why) in [
        ("0/2", "I must be between 1 and N"),
        ("3/2", "I must be between 1 and N"),
        ("1/0", "N must be at least 1"),
        ("x/2", "I is not a whole number"),
        ("1/y", "N is not a whole number"),
        ("12", "expected I/N"),
    ] {
        let out = gridloop(&[
            "fleet",
            FLEET,
            "--shard",
            shard,
            "--no-modbus",
            "--broker",
            "none",
        ]);
        assert_code(&out, exit::INVALID_INPUT);
        let err = stderr(&out);
        assert!(
            err.contains(&format!("bad --shard `{shard}`: {why}")),
            "{shard}: {err}"
        );
        assert!(out.stdout.is_empty(), "{shard}: nothing runs");
    }
    for (args, needle) in [
        (
            &["--meters", "100", "--modbus-base", "127.0.0.1:65500"][..],
            "100 meters need Modbus ports 65500..=65599, past 65535; use --gateway or a lower \
             --modbus-base",
        ),
        (
            // 250 meters need two gateways: 65535 and 65536.
            &[
                "--meters",
                "250",
                "--gateway",
                "--modbus-base",
                "127.0.0.1:65535",
            ],
            "250 meters need Modbus ports 65535..=65536, past 65535",
        ),
        (
            &["--meters", "2", "--modbus-base", "127.0.0.1:0"],
            "2 Modbus listeners count their ports up from the base, so the base port cannot be 0",
        ),
    ] {
        let mut argv = vec!["fleet", FLEET, "--broker", "none"];
        argv.extend_from_slice(args);
        let out = gridloop(&argv);
        assert_code(&out, exit::INVALID_INPUT);
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
        assert!(out.stdout.is_empty(), "{args:?}: nothing runs");
    }
}

#[test]
fn two_shards_split_the_fleet() {
    let dir = scratch("fleet-shards");
    // Both halves at once (each takes 1 s of wall time).
    let runs: Vec<_> = ["1/2", "2/2"]
        .into_iter()
        .map(|shard| {
            let summary = dir.join(format!("summary-{}.json", &shard[..1]));
            let s = summary.clone();
            let handle = std::thread::spawn(move || {
                gridloop(&[
                    "fleet",
                    FLEET,
                    "--meters",
                    "10",
                    "--shard",
                    shard,
                    "--broker",
                    "none",
                    "--no-modbus",
                    "--duration",
                    "1s",
                    "--event-log",
                    "none",
                    "--summary-json",
                    path_arg(&s),
                    "-q",
                ])
            });
            (shard, summary, handle)
        })
        .collect();
    for (shard, summary, handle) in runs {
        let out = handle.join().unwrap();
        assert_code(&out, exit::SUCCESS);
        assert_eq!(
            stdout(&out),
            format!("fleet grid-wide-sag-fleet: 5 of 10 meters (shard {shard}), no modbus\n")
        );
        let err = stderr(&out);
        assert!(
            err.starts_with("done: 5 meters, grid time 1.000 s"),
            "{shard}: {err}"
        );
        assert!(!err.contains("mqtt:"), "{shard}: no MQTT: {err}");
        let doc: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
        assert_eq!(doc["shard"], shard);
        assert_eq!(doc["meters"], 5);
        assert_eq!(doc["fleet_meters"], 10);
        assert_eq!(doc["modbus_listeners"], 0);
        assert_eq!(doc["mqtt"], serde_json::Value::Null);
        assert_eq!(doc["broker"], serde_json::Value::Null);
        // Before the sag at 3 s nothing trips.
        assert_eq!(doc["trips"], 0);
    }
}

/// Ctrl-C: the fleet stops pacing, every link flushes what its meter buffered, publishes its
/// offline status and disconnects, and the summary says so (exit 0).
#[test]
fn ctrl_c_drains_every_link_and_exits_0() {
    if find_program("mosquitto").is_none() {
        assert!(
            std::env::var_os("GRIDLOOP_REQUIRE_PEERS").is_none(),
            "GRIDLOOP_REQUIRE_PEERS is set but mosquitto is not installed"
        );
        return;
    }
    let dir = scratch("fleet-ctrl-c");
    let summary = dir.join("summary.json");
    // The bench scenario runs for an hour: only Ctrl-C ends this fleet.
    let mut child = Command::new(env!("CARGO_BIN_EXE_gridloop"))
        .args([
            "fleet",
            "../scenarios/bench/fleet-1hz.yaml",
            "--meters",
            "60",
            "--no-modbus",
            "--broker",
            "spawn:mosquitto",
            "--event-log",
            "none",
            "-q",
            "--summary-json",
            path_arg(&summary),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(
        first.starts_with("fleet fleet-1hz: 60 of 60 meters"),
        "{first}"
    );
    let broker = lines.next().unwrap().unwrap();
    assert!(
        broker.starts_with("broker: spawned mosquitto on "),
        "{broker}"
    );
    // Let the meters produce a few readings (one per meter per second), then interrupt.
    std::thread::sleep(Duration::from_millis(2500));
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the fleet did not exit after Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(child.wait().unwrap().success(), "{err}");
    assert!(err.starts_with("interrupted: 60 meters"), "{err}");
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    assert_eq!(s["interrupted"], true);
    let produced = s["produced"].as_u64().unwrap();
    assert!(produced >= 60, "{s}");
    assert_eq!(s["mqtt"]["acked"].as_u64().unwrap(), produced, "{s}");
    assert_eq!(s["links"]["flushed"], 60, "{s}");
    assert_eq!(s["links"]["left_in_ring"], 0, "{s}");
    assert_eq!(s["overflowed"], 0, "{s}");
}
